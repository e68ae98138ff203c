//! Building the client (no server contact) and preparing the database:
//! the ledgers' indexes, their TTL on `finished_at`.

use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;
use mongodb::options::{
    Acknowledgment, ClientOptions, DatabaseOptions, IndexOptions, WriteConcern,
};
use mongodb::{Client, IndexModel};

use super::{classify, MongoStore};
use crate::store::model::{OPS, TRADES};
use crate::store::{MongoConfig, StoreConfig, StoreError};

/// Server error codes of an index that exists with other options (the TTL
/// index, after `store.ledger_retention_ms` changed).
const INDEX_CONFLICT_CODES: &[i32] = &[85, 86];

impl MongoStore {
    /// Build the client. This does not contact the server (the driver
    /// connects on first use), so it succeeds while the store is down; only
    /// a malformed URI (or an SRV record that cannot be resolved) fails.
    pub async fn connect(config: &MongoConfig) -> Result<MongoStore, StoreError> {
        let mut options = ClientOptions::parse(&config.uri).await.map_err(|e| {
            StoreError::Unavailable(format!("store.mongodb.uri {:?}: {e}", redact(&config.uri)))
        })?;
        options.app_name.get_or_insert_with(|| "tessera".into());
        options.max_pool_size = Some(config.max_pool_size);
        options.min_pool_size = Some(config.min_pool_size);
        options.connect_timeout = Some(Duration::from_millis(config.connect_timeout_ms));
        options.server_selection_timeout =
            Some(Duration::from_millis(config.server_selection_timeout_ms));
        let w = if config.write_concern == "majority" {
            Acknowledgment::Majority
        } else {
            Acknowledgment::Nodes(config.write_concern.parse().unwrap_or(1))
        };
        let wc = WriteConcern::builder()
            .w(w.clone())
            .journal(config.journal)
            .build();
        let client = Client::with_options(options).map_err(classify)?;
        let db = client.database_with_options(
            &config.database,
            DatabaseOptions::builder().write_concern(wc).build(),
        );
        let w_bson = match w {
            Acknowledgment::Nodes(n) => Bson::Int64(i64::from(n)),
            _ => Bson::String("majority".into()),
        };
        Ok(MongoStore {
            client,
            db,
            write_concern: doc! { "w": w_bson, "j": config.journal },
            ledger_retention: Duration::from_millis(StoreConfig::default().ledger_retention_ms),
        })
    }

    /// Keep finished ledger rows for `retention` (`store.ledger_retention_ms`).
    pub fn with_ledger_retention(mut self, retention: Duration) -> MongoStore {
        self.ledger_retention = retention;
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The TTL index on `finished_at` of a ledger, expiring after the
    /// configured retention; an existing one with another expiry is changed
    /// in place (`collMod`).
    async fn ensure_ttl(&self, collection: &str) -> Result<(), StoreError> {
        let ttl = IndexModel::builder()
            .keys(doc! { "finished_at": 1 })
            .options(
                IndexOptions::builder()
                    .name("finished_ttl".to_string())
                    .expire_after(self.ledger_retention)
                    .build(),
            )
            .build();
        let created = self
            .db
            .collection::<Document>(collection)
            .create_index(ttl)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.kind.as_ref(), ErrorKind::Command(c) if INDEX_CONFLICT_CODES.contains(&c.code)) => {
                self.db
                    .run_command(doc! {
                        "collMod": collection,
                        "index": {
                            "name": "finished_ttl",
                            "expireAfterSeconds": self.ledger_retention.as_secs() as i64,
                        },
                    })
                    .await
                    .map(drop)
                    .map_err(classify)
            }
            Err(e) => Err(classify(e)),
        }
    }

    pub(super) async fn create_indexes(&self) -> Result<(), StoreError> {
        let index = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_string()).build())
                .build()
        };
        self.players()
            .create_indexes([
                index(doc! { "name": 1 }, "name"),
                index(doc! { "pending_trades": 1 }, "pending_trades"),
                index(doc! { "pending_ops": 1 }, "pending_ops"),
            ])
            .await
            .map_err(classify)?;
        for ledger in [self.trades(), self.ops()] {
            ledger
                .create_indexes([index(doc! { "state": 1, "updated_ms": 1 }, "state_updated")])
                .await
                .map_err(classify)?;
        }
        self.ensure_ttl(TRADES).await?;
        self.ensure_ttl(OPS).await
    }
}

/// The URI without its password, for messages.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &uri[..scheme], &uri[at + 1..])
        }
        _ => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_redacted() {
        assert_eq!(
            redact("mongodb://user:secret@db:27017/x"),
            "mongodb://***@db:27017/x"
        );
        assert_eq!(redact("mongodb://db:27017"), "mongodb://db:27017");
    }
}
