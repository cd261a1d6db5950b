//! A backend instance entry (`[[instances]]`) and the rules its URL follows.

use serde::Deserialize;

#[derive(
    Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum InstanceKind {
    Image,
    Speech,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Qwen,
    Fastwhisper,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceSettings {
    pub kind: InstanceKind,
    pub url: String,
    pub protocol: Option<Protocol>,
    #[serde(default = "one")]
    pub capacity: u32,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Largest capacity of one instance: each unit of image capacity is a worker actor.
pub const MAX_INSTANCE_CAPACITY: u32 = 1024;
pub const MAX_INSTANCE_WEIGHT: u32 = 1000;

impl InstanceSettings {
    pub fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or(match self.kind {
            InstanceKind::Image => Protocol::Qwen,
            InstanceKind::Speech => Protocol::Fastwhisper,
        })
    }

    /// The first field that is invalid, with the reason.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        check_instance_url(&self.url).map_err(|reason| ("url", reason))?;
        if !(1..=MAX_INSTANCE_CAPACITY).contains(&self.capacity) {
            let reason = format!("must be between 1 and {MAX_INSTANCE_CAPACITY}");
            return Err(("capacity", reason));
        }
        if !(1..=MAX_INSTANCE_WEIGHT).contains(&self.weight) {
            let reason = format!("must be between 1 and {MAX_INSTANCE_WEIGHT}");
            return Err(("weight", reason));
        }
        let expected = match self.kind {
            InstanceKind::Image => Protocol::Qwen,
            InstanceKind::Speech => Protocol::Fastwhisper,
        };
        if self.protocol() != expected {
            let reason = "image instances speak qwen, speech instances fastwhisper".to_string();
            return Err(("protocol", reason));
        }
        Ok(())
    }

    /// Whether both name the same backend: same kind, and URLs equal once normalised.
    pub fn same_backend(&self, other: &InstanceSettings) -> bool {
        self.kind == other.kind && url_key(&self.url) == url_key(&other.url)
    }
}

const MAX_URL_BYTES: usize = 2048;

/// An instance URL must be absolute http with a host, and no query or fragment. Backends
/// sit on a private network; the client is built without TLS.
pub fn check_instance_url(raw: &str) -> Result<(), String> {
    if raw.len() > MAX_URL_BYTES {
        return Err(format!("must be at most {MAX_URL_BYTES} bytes"));
    }
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme() != "http" {
        return Err("scheme must be http (TLS to backends is not supported)".into());
    }
    if url.host_str().is_none() {
        return Err("must name a host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not carry a query or fragment".into());
    }
    Ok(())
}

/// The form of an instance URL that duplicates are judged by (`http://Host:80/` and
/// `http://host` are one backend); a URL that does not parse stays as written.
pub fn url_key(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(url) => url.as_str().trim_end_matches('/').to_string(),
        Err(_) => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_judged_by_their_normal_form() {
        assert_eq!(url_key("http://Host:80/"), url_key("http://host"));
        assert_ne!(url_key("http://host:8000"), url_key("http://host:8001"));
        assert!(check_instance_url("http://10.0.0.5:8000/base").is_ok());
        for bad in [
            "https://host",
            "http://host/?q=1",
            "http://host/#x",
            "host:8000",
            "",
        ] {
            assert!(check_instance_url(bad).is_err(), "{bad}");
        }
    }
}
