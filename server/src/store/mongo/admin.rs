//! Bans and the audit trail in MongoDB: plain documents, replaced or
//! inserted whole, with the configured write concern.

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use protocol::admin::{Ban, Event};

use super::{classify, MongoStore};
use crate::store::model::{audit_document, ban_document, decode_audit, decode_ban, AUDIT, BANS};
use crate::store::{report_bad, StoreError};

impl MongoStore {
    fn collection(&self, name: &str) -> mongodb::Collection<Document> {
        self.db.collection(name)
    }

    pub(super) async fn put_ban_doc(&self, ban: Ban) -> Result<(), StoreError> {
        self.collection(BANS)
            .replace_one(doc! { "_id": &ban.player }, ban_document(&ban))
            .upsert(true)
            .await
            .map(drop)
            .map_err(classify)
    }

    pub(super) async fn delete_ban_doc(&self, player: String) -> Result<bool, StoreError> {
        self.collection(BANS)
            .delete_one(doc! { "_id": player })
            .await
            .map(|r| r.deleted_count > 0)
            .map_err(classify)
    }

    pub(super) async fn load_ban_docs(&self) -> Result<Vec<Ban>, StoreError> {
        let docs: Vec<Document> = self
            .collection(BANS)
            .find(doc! {})
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        Ok(docs
            .into_iter()
            .filter_map(|d| decode_ban(d).map_err(|e| report_bad(&e)).ok())
            .collect())
    }

    pub(super) async fn append_audit_doc(&self, event: Event) -> Result<(), StoreError> {
        let doc = audit_document(&event);
        let id = doc.get("_id").cloned();
        // Replace-or-insert by `_id`: a retried append writes the row once.
        self.collection(AUDIT)
            .replace_one(doc! { "_id": id }, doc)
            .upsert(true)
            .await
            .map(drop)
            .map_err(classify)
    }

    pub(super) async fn load_audit_docs(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        let docs: Vec<Document> = self
            .collection(AUDIT)
            .find(doc! {})
            .sort(doc! { "_id": -1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        let mut events: Vec<Event> = docs
            .into_iter()
            .filter_map(|d| decode_audit(d).map_err(|e| report_bad(&e)).ok())
            .collect();
        events.reverse();
        Ok(events)
    }
}
