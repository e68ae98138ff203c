//! Tessera operations tooling: the admin CLI's calls against a shard's HTTP
//! API (`/healthz`, `/metrics`, `/admin/*`, documented in the README).
//!
//! # Layout
//!
//! - [`Shard`]: one shard's HTTP address and optional admin token; every
//!   call has a timeout and turns HTTP errors into readable messages.
//! - [`metrics`]: picking samples out of Prometheus text.
//! - [`peers`]: the peer tunnels' registries (`GET /admin/peers`) as text.
//!
//! `ops` never links the server: it meets it at the HTTP API only, whose
//! bodies are the typed documents of [`protocol::admin`] (the same types
//! the server answers with). The ops
//! dashboard, local-cluster runner and deploy manifests arrive with their
//! own issues.

use std::time::Duration;

use anyhow::{bail, Context as _};
use protocol::admin::{AnnounceReply, AnnounceRequest, ErrorReply, Health, Peers};
use serde::de::DeserializeOwned;

pub mod metrics;
pub mod peers;

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
        let response = self
            .agent
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        read_body("GET", &url, response)
    }

    /// GET a JSON document.
    fn get_json<R: DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        let body = self.get(path)?;
        serde_json::from_str(&body).with_context(|| format!("{path}: unexpected reply {body}"))
    }

    /// POST a JSON body to an admin route, with the token.
    fn admin<R: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<R> {
        let token = self.require_token()?;
        let url = format!("{}{path}", self.base);
        let body = serde_json::to_string(body).context("admin request body")?;
        let response = self
            .agent
            .post(&url)
            .header("authorization", &format!("Bearer {token}"))
            .header("content-type", "application/json")
            .send(body.as_str())
            .with_context(|| format!("POST {url}"))?;
        let reply = read_body("POST", &url, response)?;
        serde_json::from_str(&reply).with_context(|| format!("{path}: unexpected reply {reply}"))
    }

    /// GET an admin document, with the token.
    fn admin_get<R: DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        let token = self.require_token()?;
        let url = format!("{}{path}", self.base);
        let response = self
            .agent
            .get(&url)
            .header("authorization", &format!("Bearer {token}"))
            .call()
            .with_context(|| format!("GET {url}"))?;
        let reply = read_body("GET", &url, response)?;
        serde_json::from_str(&reply).with_context(|| format!("{path}: unexpected reply {reply}"))
    }

    fn require_token(&self) -> anyhow::Result<&str> {
        match &self.token {
            Some(token) => Ok(token),
            None => {
                bail!("admin calls need the shard's admin token (--token or TESSERA_ADMIN__TOKEN)")
            }
        }
    }

    /// The shard's peer tunnels: listeners, peers, streams, refusals.
    pub fn peers(&self) -> anyhow::Result<Peers> {
        self.admin_get("/admin/peers")
    }

    /// The shard's health document.
    pub fn health(&self) -> anyhow::Result<Health> {
        self.get_json("/healthz")
    }

    /// The shard's Prometheus metrics, as text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        self.get("/metrics")
    }

    /// Announce `text` to every player, or to the players of `map`.
    pub fn announce(&self, text: &str, map: Option<&str>) -> anyhow::Result<AnnounceReply> {
        let request = AnnounceRequest {
            text: text.to_string(),
            map: map.map(str::to_string),
        };
        self.admin("/admin/announce", &request)
    }
}

/// A reply's body, or an error naming the call, the status and the shard's
/// message (its `{"error": ...}` when it sent one).
fn read_body(
    method: &str,
    url: &str,
    mut response: ureq::http::Response<ureq::Body>,
) -> anyhow::Result<String> {
    let status = response.status();
    let body = response.body_mut().read_to_string()?;
    if !status.is_success() {
        let message = serde_json::from_str::<ErrorReply>(&body).map_or(body, |e| e.error);
        bail!("{method} {url}: {status}: {message}");
    }
    Ok(body)
}
