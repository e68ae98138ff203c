//! Where the console finds its shards. [`ShardSource`] is the seam: the
//! static list of `--shard` flags is here; a cluster's directory
//! (`--redis`) is `crate::directory::DirectorySource`.

/// The shards to show, asked again at every refresh (so a source can
/// follow shards that come and go).
pub trait ShardSource: Send + Sync + 'static {
    /// Each shard's HTTP base URL (`http://HOST:PORT`).
    fn shards(&self) -> Vec<String>;

    /// Whether the shards run as a cluster (the console then offers
    /// migrate and drain).
    fn cluster(&self) -> bool {
        false
    }

    /// The directory's records and leases, when the source reads one
    /// (`--redis`); `Err` says why it could not be read. Called on the
    /// blocking pool.
    fn directory(&self) -> Option<Result<crate::directory::Snapshot, String>> {
        None
    }

    /// The last `count` events of the directory's stream (`--redis`);
    /// called on the blocking pool.
    fn events(&self, _count: usize) -> Option<Result<Vec<crate::directory::ClusterEvent>, String>> {
        None
    }
}

/// A fixed list of shards, from `--shard` flags.
pub struct StaticShards(Vec<String>);

impl StaticShards {
    /// `HOST:PORT` or URLs; duplicates are dropped, order kept.
    pub fn new(shards: impl IntoIterator<Item = String>) -> StaticShards {
        let mut list: Vec<String> = Vec::new();
        for shard in shards {
            let url = if shard.starts_with("http://") || shard.starts_with("https://") {
                shard.trim_end_matches('/').to_string()
            } else {
                format!("http://{}", shard.trim_end_matches('/'))
            };
            if !list.contains(&url) {
                list.push(url);
            }
        }
        StaticShards(list)
    }
}

impl ShardSource for StaticShards {
    fn shards(&self) -> Vec<String> {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_list_normalises_and_dedups() {
        let s = StaticShards::new([
            "127.0.0.1:1".into(),
            "http://127.0.0.1:1/".into(),
            "h:2".into(),
        ]);
        assert_eq!(s.shards(), ["http://127.0.0.1:1", "http://h:2"]);
        assert!(!s.cluster());
    }
}
