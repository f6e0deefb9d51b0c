-- Deleted clients (`valet client delete`): never active again, their ids never reused.
ALTER TABLE clients ADD COLUMN IF NOT EXISTS deleted_at BIGINT;
