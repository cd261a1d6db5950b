//! Backend instances: what one is (`InstanceSpec`, from a `[[instances]]` entry or an
//! admin's request), the rules its URL follows, how the balancing strategies are named,
//! and the changes admins may make.

use serde::{Deserialize, Serialize};

use super::ValidationError;

pub use entity::instance::{InstanceKind, Protocol};

/// How the instances of a kind share its calls (`balancing.image`, `balancing.speech`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum Strategy {
    RoundRobin,
    UserHash,
    LeastLoaded,
}

impl TryFrom<String> for Strategy {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        match raw.as_str() {
            "round-robin" => Ok(Strategy::RoundRobin),
            "user-hash" => Ok(Strategy::UserHash),
            "least-loaded" => Ok(Strategy::LeastLoaded),
            _ => Err(format!(
                "`{raw}` is not one of `least-loaded`, `round-robin`, `user-hash`"
            )),
        }
    }
}

/// Largest capacity of one instance: each unit of image capacity is a worker actor.
pub const MAX_INSTANCE_CAPACITY: u32 = 1024;
pub const MAX_INSTANCE_WEIGHT: u32 = 1000;
const MAX_URL_BYTES: usize = 2048;

/// One backend instance: a `[[instances]]` entry of settings.toml, or an admin's addition.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    pub kind: InstanceKind,
    pub url: String,
    /// Defaults from the kind: qwen for image, fastwhisper for speech.
    pub protocol: Option<Protocol>,
    /// The model an openai instance is asked for; unset, the kind's default.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default = "one")]
    pub capacity: u32,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// The model an openai image instance is asked for when none is set: OpenAI's own
/// default. Most servers name their models otherwise, so set `model` for them.
const DEFAULT_IMAGE_MODEL: &str = "dall-e-2";
/// The model an openai speech instance is asked for when none is set.
const DEFAULT_SPEECH_MODEL: &str = "whisper-1";
const MAX_MODEL_CHARS: usize = 256;

/// The protocols an instance of `kind` may speak; the first is the default.
fn protocols_of(kind: InstanceKind) -> &'static [Protocol] {
    match kind {
        InstanceKind::Image => &[Protocol::Qwen, Protocol::Openai, Protocol::A1111],
        InstanceKind::Speech => &[Protocol::Fastwhisper, Protocol::Openai],
    }
}

impl InstanceSpec {
    /// An instance of capacity 1 and weight 1 speaking the kind's default protocol.
    pub fn new(kind: InstanceKind, url: impl Into<String>) -> InstanceSpec {
        InstanceSpec {
            kind,
            url: url.into(),
            protocol: None,
            model: None,
            capacity: 1,
            weight: 1,
        }
    }

    pub fn with_capacity(mut self, capacity: u32) -> InstanceSpec {
        self.capacity = capacity;
        self
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or(protocols_of(self.kind)[0])
    }

    /// The model calls name: the one set, or the kind's default; only openai instances
    /// name one.
    pub fn model(&self) -> Option<&str> {
        if self.protocol() != Protocol::Openai {
            return None;
        }
        Some(self.model.as_deref().unwrap_or(match self.kind {
            InstanceKind::Image => DEFAULT_IMAGE_MODEL,
            InstanceKind::Speech => DEFAULT_SPEECH_MODEL,
        }))
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
        if !protocols_of(self.kind).contains(&self.protocol()) {
            let reason = "image instances speak qwen, openai or a1111; \
                          speech instances fastwhisper or openai"
                .to_string();
            return Err(("protocol", reason));
        }
        if let Some(model) = &self.model {
            check_model(model, self.protocol()).map_err(|reason| ("model", reason))?;
        }
        Ok(())
    }

    /// The name every gateway on one database knows this backend by (its call slots are
    /// shared under it): the kind and the normalised URL.
    pub fn shared_key(&self) -> String {
        let kind = match self.kind {
            InstanceKind::Image => "image",
            InstanceKind::Speech => "speech",
        };
        format!("{kind}:{}", url_key(&self.url))
    }

    /// Whether both name the same backend: same kind, and URLs equal once normalised.
    pub fn same_backend(&self, other: &InstanceSpec) -> bool {
        self.kind == other.kind && url_key(&self.url) == url_key(&other.url)
    }
}

/// A model name is one line of text, and only openai instances take one: the others
/// serve whatever model their server has loaded.
fn check_model(model: &str, protocol: Protocol) -> Result<(), String> {
    if protocol != Protocol::Openai {
        return Err("only openai instances take a model".into());
    }
    if model.trim().is_empty() || model.trim() != model {
        return Err("must not be empty or start or end with spaces".into());
    }
    if model.chars().count() > MAX_MODEL_CHARS {
        return Err(format!("must be at most {MAX_MODEL_CHARS} characters"));
    }
    if model.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// An instance URL must be absolute http with a host, and no query or fragment. Backends
/// sit on a private network; the client is built without TLS.
pub fn check_instance_url(raw: &str) -> Result<(), String> {
    if raw.len() > MAX_URL_BYTES {
        return Err(format!("must be at most {MAX_URL_BYTES} bytes"));
    }
    // The URL parser drops tabs and line breaks silently: refused rather than stored as
    // something else than what was sent.
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters (such as CR or LF)".into());
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

/// The URL without its userinfo (`http://user:secret@host/` → `http://host/`), for logs,
/// spans, stored task rows and the admin listing; a URL without userinfo is returned as
/// it is.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Ok(_) => raw.to_string(),
        // Only checked URLs reach here; anything else is not shown at all.
        Err(_) => "(unparsable url)".to_string(),
    }
}

/// The form of an instance URL that duplicates are judged by (`http://Host:80/` and
/// `http://host` are one backend); a URL that does not parse stays as written.
pub fn url_key(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(url) => url.as_str().trim_end_matches('/').to_string(),
        Err(_) => raw.to_string(),
    }
}

/// Body of `POST /api/v1/admin/instances`. Unknown fields are refused, so a misspelt
/// one is not silently ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInstanceRequest {
    pub kind: InstanceKind,
    /// `http://host[:port][/path]` (at most 2048 bytes, no query, no control
    /// characters); TLS to backends is not supported.
    #[schema(max_length = 2048, example = "http://10.0.0.7:8000")]
    pub url: String,
    /// Defaults from the kind: qwen for image, fastwhisper for speech. Image instances
    /// speak qwen, openai or a1111; speech instances fastwhisper or openai.
    pub protocol: Option<Protocol>,
    /// openai instances only: the model calls name (default dall-e-2 for images,
    /// whisper-1 for speech).
    #[schema(example = "Systran/faster-whisper-small")]
    pub model: Option<String>,
    /// Concurrent calls it takes, 1 to 1024 (default 1).
    #[schema(minimum = 1, maximum = 1024)]
    pub capacity: Option<u32>,
    /// 1 to 1000 (default 1): share of users under user-hash, preference among equally
    /// loaded instances under least-loaded.
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: Option<u32>,
}

impl TryFrom<NewInstanceRequest> for InstanceSpec {
    type Error = ValidationError;

    fn try_from(request: NewInstanceRequest) -> Result<Self, Self::Error> {
        let spec = InstanceSpec {
            kind: request.kind,
            url: request.url.trim().to_string(),
            protocol: request.protocol,
            model: request.model,
            capacity: request.capacity.unwrap_or(1),
            weight: request.weight.unwrap_or(1),
        };
        spec.check()
            .map_err(|(field, reason)| ValidationError(format!("{field}: {reason}")))?;
        Ok(spec)
    }
}

/// Body of `PATCH /api/v1/admin/instances/{id}`: at least one field.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceChangeRequest {
    /// 1 to 1024; lowering it below the calls in flight lets them finish.
    #[schema(minimum = 1, maximum = 1024)]
    pub capacity: Option<u32>,
    /// 1 to 1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: Option<u32>,
    /// `false`: no new work (calls in flight finish), still pinged.
    pub enabled: Option<bool>,
}

/// A checked change to an instance.
#[derive(Debug, Clone)]
pub struct InstanceChange {
    pub capacity: Option<u32>,
    pub weight: Option<u32>,
    pub enabled: Option<bool>,
}

impl TryFrom<InstanceChangeRequest> for InstanceChange {
    type Error = ValidationError;

    fn try_from(request: InstanceChangeRequest) -> Result<Self, Self::Error> {
        let InstanceChangeRequest {
            capacity,
            weight,
            enabled,
        } = request;
        if capacity.is_none() && weight.is_none() && enabled.is_none() {
            return Err(ValidationError::new(
                "nothing to change: give capacity, weight or enabled",
            ));
        }
        if capacity.is_some_and(|c| !(1..=MAX_INSTANCE_CAPACITY).contains(&c)) {
            return Err(ValidationError(format!(
                "capacity: must be between 1 and {MAX_INSTANCE_CAPACITY}"
            )));
        }
        if weight.is_some_and(|w| !(1..=MAX_INSTANCE_WEIGHT).contains(&w)) {
            return Err(ValidationError(format!(
                "weight: must be between 1 and {MAX_INSTANCE_WEIGHT}"
            )));
        }
        Ok(InstanceChange {
            capacity,
            weight,
            enabled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: InstanceKind, protocol: Option<Protocol>, model: Option<&str>) -> InstanceSpec {
        InstanceSpec {
            protocol,
            model: model.map(str::to_string),
            ..InstanceSpec::new(kind, "http://10.0.0.5:8000")
        }
    }

    #[test]
    fn each_kind_takes_its_own_protocols() {
        use InstanceKind::{Image, Speech};
        use Protocol::*;
        for (kind, protocol) in [
            (Image, Qwen),
            (Image, Openai),
            (Image, A1111),
            (Speech, Fastwhisper),
            (Speech, Openai),
        ] {
            assert_eq!(
                spec(kind, Some(protocol), None).check(),
                Ok(()),
                "{kind:?} {protocol:?}"
            );
        }
        for (kind, protocol) in [(Image, Fastwhisper), (Speech, Qwen), (Speech, A1111)] {
            let (field, _) = spec(kind, Some(protocol), None).check().unwrap_err();
            assert_eq!(field, "protocol", "{kind:?} {protocol:?}");
        }
        assert_eq!(spec(Image, None, None).protocol(), Qwen);
        assert_eq!(spec(Speech, None, None).protocol(), Fastwhisper);
    }

    #[test]
    fn only_openai_instances_name_a_model_and_they_always_do() {
        use InstanceKind::{Image, Speech};
        let openai = Some(Protocol::Openai);
        assert_eq!(spec(Image, openai, None).model(), Some(DEFAULT_IMAGE_MODEL));
        assert_eq!(
            spec(Speech, openai, None).model(),
            Some(DEFAULT_SPEECH_MODEL)
        );
        let named = spec(Speech, openai, Some("Systran/faster-whisper-small"));
        assert_eq!(named.check(), Ok(()));
        assert_eq!(named.model(), Some("Systran/faster-whisper-small"));
        assert_eq!(spec(Image, Some(Protocol::A1111), None).model(), None);
        for (protocol, model) in [
            (Some(Protocol::Qwen), "sd-xl"),
            (Some(Protocol::A1111), "sd-xl"),
            (openai, ""),
            (openai, " padded"),
            (openai, "two\nlines"),
        ] {
            let (field, _) = spec(Image, protocol, Some(model)).check().unwrap_err();
            assert_eq!(field, "model", "{protocol:?} {model:?}");
        }
        let long = "m".repeat(MAX_MODEL_CHARS + 1);
        assert!(spec(Image, openai, Some(&long)).check().is_err());
    }

    #[test]
    fn userinfo_is_redacted_and_other_urls_are_left_as_they_are() {
        assert_eq!(
            redact_url("http://user:secret@10.0.0.7:8000/base"),
            "http://10.0.0.7:8000/base"
        );
        assert_eq!(redact_url("http://user@host"), "http://host/");
        assert_eq!(redact_url("http://10.0.0.7:8000"), "http://10.0.0.7:8000");
    }

    #[test]
    fn urls_are_judged_by_their_normal_form() {
        assert_eq!(url_key("http://Host:80/"), url_key("http://host"));
        assert_ne!(url_key("http://host:8000"), url_key("http://host:8001"));
        assert!(check_instance_url("http://10.0.0.5:8000/base").is_ok());
        for bad in [
            "http://127.0.0.1:9/X\r\nX: y",
            "http://host/\tpath",
            "http://host/\u{7f}",
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
