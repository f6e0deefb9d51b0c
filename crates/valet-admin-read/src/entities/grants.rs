//! `grants` (migrations 2 and 11).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "grants")]
pub struct Model {
    /// UUID v7: by id is by age.
    #[sea_orm(primary_key, auto_increment = false)]
    pub grant_id: Uuid,
    pub client_id: String,
    pub user_id: Option<Uuid>,
    pub username: Option<String>,
    pub scope: String,
    pub origin: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
