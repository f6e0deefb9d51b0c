-- Raised by an append whose expected stream version is wrong, so that a single
-- statement appending to several streams (and writing their read models) fails as a
-- whole instead of committing part of its work. SQLSTATE VA001; HINT = the stream,
-- DETAIL = the version it is actually at.
CREATE OR REPLACE FUNCTION valet_version_conflict(stream TEXT, expected BIGINT, actual BIGINT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'VA001',
        MESSAGE = format('stream %s is at version %s, not %s', stream, actual, expected),
        DETAIL = actual::text,
        HINT = stream;
END
$$;
