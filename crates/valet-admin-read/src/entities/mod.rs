//! sea-orm entities over the read-model tables the admin API lists. Read-only: the
//! projector writes these tables (with tokio-postgres, in the append transaction), so
//! no code here builds an active model. Columns the lists never show (secret digests)
//! are left out of the models.

pub mod clients;
pub mod grants;
pub mod users;
