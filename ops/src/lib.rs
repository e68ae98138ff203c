//! Tessera operations tooling: the admin CLI's calls against a shard's HTTP
//! API (`/healthz`, `/metrics`, `/admin/*`, documented in the README).
//!
//! # Layout
//!
//! - [`Shard`]: one shard's HTTP address and optional admin token; every
//!   call has a timeout and turns HTTP errors into readable messages.
//! - [`metrics`]: picking samples out of Prometheus text.
//!
//! `ops` never links the server: it meets it at the HTTP API only. The ops
//! dashboard, local-cluster runner and deploy manifests arrive with their
//! own issues.

use std::time::Duration;

use anyhow::{bail, Context as _};

pub mod metrics;

/// One shard's HTTP API.
pub struct Shard {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Shard {
    /// `http` is `HOST:PORT` or `http://HOST:PORT`.
    pub fn new(http: &str, token: Option<String>, timeout: Duration) -> Shard {
        let base = if http.starts_with("http://") {
            http.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", http.trim_end_matches('/'))
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Shard { base, token, agent }
    }

    fn get(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let mut response = self
            .agent
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body = response.body_mut().read_to_string()?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {body}");
        }
        Ok(body)
    }

    /// The shard's health document.
    pub fn health(&self) -> anyhow::Result<serde_json::Value> {
        let body = self.get("/healthz")?;
        serde_json::from_str(&body).context("healthz is not JSON")
    }

    /// The shard's Prometheus metrics, as text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        self.get("/metrics")
    }

    /// Announce `text` to every player, or to the players of `map`.
    pub fn announce(&self, text: &str, map: Option<&str>) -> anyhow::Result<serde_json::Value> {
        let Some(token) = &self.token else {
            bail!("admin calls need the shard's admin token (--token or TESSERA_ADMIN__TOKEN)");
        };
        let url = format!("{}/admin/announce", self.base);
        let body = serde_json::json!({ "text": text, "map": map }).to_string();
        let mut response = self
            .agent
            .post(&url)
            .header("authorization", &format!("Bearer {token}"))
            .header("content-type", "application/json")
            .send(body.as_str())
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let reply = response.body_mut().read_to_string()?;
        if !status.is_success() {
            bail!("POST {url}: {status}: {reply}");
        }
        serde_json::from_str(&reply).context("announce reply is not JSON")
    }
}
