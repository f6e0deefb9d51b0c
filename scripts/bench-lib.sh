# Helpers shared by the benchmark scripts (sourced). The caller defines log() and
# PG_ADMIN_URL.

# Stops `valet serve` (PID in VALET_PID, if any): TERM, up to 10 s, then KILL.
stop_valet() {
    [[ -n "$VALET_PID" ]] || return 0
    if kill -0 "$VALET_PID" 2>/dev/null; then
        log "stopping valet serve (PID $VALET_PID)"
        kill -TERM "$VALET_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$VALET_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$VALET_PID" 2>/dev/null || true
    fi
    wait "$VALET_PID" 2>/dev/null || true
    VALET_PID=""
}

admin_sql() { PGOPTIONS='-c client_min_messages=warning' psql -X -q -v ON_ERROR_STOP=1 "$PG_ADMIN_URL" -c "$1" >&2; }

# Flushes dirty pages so no measurement pays for another's.
checkpoint() {
    psql -X -q -v ON_ERROR_STOP=1 "$PG_ADMIN_URL" -c CHECKPOINT >&2 || log "warning: CHECKPOINT failed"
}
