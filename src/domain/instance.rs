use serde::Deserialize;

use crate::error::ApiError;
use crate::settings::{
    InstanceKind, InstanceSettings, Protocol, MAX_INSTANCE_CAPACITY, MAX_INSTANCE_WEIGHT,
};

/// Body of `POST /api/v1/admin/instances`. Unknown fields are refused, so a misspelt
/// one is not silently ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInstanceRequest {
    pub kind: InstanceKind,
    /// `http://host[:port][/path]`; TLS to backends is not supported.
    #[schema(example = "http://10.0.0.7:8000")]
    pub url: String,
    /// Defaults from the kind: qwen for image, fastwhisper for speech.
    pub protocol: Option<Protocol>,
    /// Concurrent calls it takes, 1 to 1024 (default 1).
    pub capacity: Option<u32>,
    /// 1 to 1000 (default 1): share of users under user-hash, preference among equally
    /// loaded instances under least-loaded.
    pub weight: Option<u32>,
}

impl TryFrom<NewInstanceRequest> for InstanceSettings {
    type Error = ApiError;

    fn try_from(request: NewInstanceRequest) -> Result<Self, Self::Error> {
        let config = InstanceSettings {
            kind: request.kind,
            url: request.url.trim().to_string(),
            protocol: request.protocol,
            capacity: request.capacity.unwrap_or(1),
            weight: request.weight.unwrap_or(1),
        };
        config
            .check()
            .map_err(|(field, reason)| ApiError::Validation(format!("{field}: {reason}")))?;
        Ok(config)
    }
}

/// Body of `PATCH /api/v1/admin/instances/{id}`: at least one field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceChangeRequest {
    /// 1 to 1024; lowering it below the calls in flight lets them finish.
    pub capacity: Option<u32>,
    /// 1 to 1000.
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
    type Error = ApiError;

    fn try_from(request: InstanceChangeRequest) -> Result<Self, Self::Error> {
        let InstanceChangeRequest {
            capacity,
            weight,
            enabled,
        } = request;
        if capacity.is_none() && weight.is_none() && enabled.is_none() {
            return Err(ApiError::Validation(
                "nothing to change: give capacity, weight or enabled".into(),
            ));
        }
        if capacity.is_some_and(|c| !(1..=MAX_INSTANCE_CAPACITY).contains(&c)) {
            return Err(ApiError::Validation(format!(
                "capacity: must be between 1 and {MAX_INSTANCE_CAPACITY}"
            )));
        }
        if weight.is_some_and(|w| !(1..=MAX_INSTANCE_WEIGHT).contains(&w)) {
            return Err(ApiError::Validation(format!(
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
