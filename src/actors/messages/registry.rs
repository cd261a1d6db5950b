use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backends::BackendError;
use crate::domain::{InstanceChange, InstanceId, InstanceKind, InstanceSpec, Protocol, UserId};
use crate::store::StoreError;

/// Wait for a free slot on a healthy instance of `kind`, chosen by the kind's strategy.
/// Dropping the reply future withdraws the request.
#[derive(Message)]
#[rtype(result = "Result<Lease, AcquireError>")]
pub struct Acquire {
    pub kind: InstanceKind,
    pub user_id: UserId,
    /// The instance of a failed earlier attempt: skipped while another healthy one exists.
    pub avoid: Option<InstanceId>,
    /// Answer `NoHealthyInstance` at once when no instance of the kind is healthy,
    /// instead of waiting for one (synchronous callers).
    pub fail_fast: bool,
    /// Answer `TooManyWaiting` at once when this many requests of the kind already wait.
    pub max_waiting: Option<usize>,
}

impl Acquire {
    /// Wait as long as it takes (the caller bounds the wait).
    pub fn waiting(kind: InstanceKind, user_id: UserId) -> Acquire {
        Acquire {
            kind,
            user_id,
            avoid: None,
            fail_fast: false,
            max_waiting: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("the instance registry stopped")]
    RegistryStopped,
    #[error("no healthy backend instance")]
    NoHealthyInstance,
    #[error("too many requests are waiting for a backend instance")]
    TooManyWaiting,
}

/// How a call on a leased instance went; feeds passive health and the instance's figures.
#[derive(Debug, Clone)]
pub enum CallOutcome {
    Success {
        latency: Duration,
    },
    /// The instance misbehaved (transport error, 5xx, timeout, unreadable answer).
    InstanceFault {
        error: String,
    },
    /// The call ended for reasons that say nothing about the instance (4xx, abandoned).
    Neutral,
}

impl From<&BackendError> for CallOutcome {
    /// A 4xx says the request was at fault, anything else that the instance was.
    fn from(error: &BackendError) -> Self {
        if error.is_instance_fault() {
            CallOutcome::InstanceFault {
                error: error.to_string(),
            }
        } else {
            CallOutcome::Neutral
        }
    }
}

/// Give a lease back (sent by `Lease::release` or its `Drop`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release {
    pub instance_id: InstanceId,
    /// The shared call slot held, with several gateways on PostgreSQL.
    pub slot: Option<u32>,
    pub outcome: CallOutcome,
}

/// The call on this lease ended with `outcome`. With several gateways the registry may
/// keep the lease (its shared slot stays taken) for the caller's next task, or hand it to
/// a request of this gateway waiting for room, instead of giving the slot back and
/// taking one again: answers the lease when the caller keeps it.
#[derive(Message)]
#[rtype(result = "Option<Lease>")]
pub struct CallEnded {
    pub lease: Lease,
    pub outcome: CallOutcome,
}

/// A claim on one call's worth of an instance's capacity. Give it back with
/// [`Lease::release`]; dropping it releases it as `Neutral`, so a cancelled or panicking
/// caller never leaks capacity.
pub struct Lease {
    instance_id: InstanceId,
    /// Where to call, credentials and all.
    pub url: String,
    /// The URL without its userinfo: what logs, spans and task rows show.
    pub shown_url: String,
    pub protocol: Protocol,
    /// The model calls name (openai instances only).
    pub model: Option<String>,
    /// The shared call slot it holds, with several gateways on PostgreSQL.
    slot: Option<u32>,
    /// When the registry granted it: a kept lease goes back after a while.
    granted_at: Instant,
    /// Where the capacity goes back to: the registry that granted it.
    registry: Recipient<Release>,
    released: bool,
}

impl Lease {
    pub fn new(
        instance_id: InstanceId,
        spec: &InstanceSpec,
        registry: Recipient<Release>,
    ) -> Lease {
        Lease {
            instance_id,
            url: spec.url.clone(),
            shown_url: crate::domain::redact_url(&spec.url),
            protocol: spec.protocol(),
            model: spec.model().map(str::to_string),
            slot: None,
            granted_at: Instant::now(),
            registry,
            released: false,
        }
    }

    /// The lease holds this shared call slot.
    pub fn in_slot(mut self, slot: u32) -> Lease {
        self.slot = Some(slot);
        self
    }

    pub fn slot(&self) -> Option<u32> {
        self.slot
    }

    pub fn instance_id(&self) -> InstanceId {
        self.instance_id
    }

    pub fn granted_at(&self) -> Instant {
        self.granted_at
    }

    pub fn release(mut self, outcome: CallOutcome) {
        self.released = true;
        self.registry.do_send(Release {
            instance_id: self.instance_id,
            slot: self.slot,
            outcome,
        });
    }

    /// A lease that was never handed out: the registry takes the capacity back itself.
    pub fn unused(mut self) {
        self.released = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            self.registry.do_send(Release {
                instance_id: self.instance_id,
                slot: self.slot,
                outcome: CallOutcome::Neutral,
            });
        }
    }
}

/// Another gateway freed a shared call slot (or may have): try the waiters again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SlotFreed;

/// Another gateway changed the instances: read them again from the database.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReloadInstances;

/// A snapshot of every instance.
#[derive(Message)]
#[rtype(result = "Vec<InstanceView>")]
pub struct ListInstances;

/// How many `Acquire` requests of the kind wait for room.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountWaiting(pub InstanceKind);

/// Add and persist an instance (checked); it takes work once its first ping succeeds.
#[derive(Message)]
#[rtype(result = "Result<InstanceView, InstanceAdminError>")]
pub struct AddInstance(pub InstanceSpec);

/// Change an instance's capacity, weight or enabled.
#[derive(Message)]
#[rtype(result = "Result<InstanceView, InstanceAdminError>")]
pub struct UpdateInstance {
    pub id: InstanceId,
    pub change: InstanceChange,
}

/// Drain an instance (no new work, calls in flight finish), then remove it.
#[derive(Message)]
#[rtype(result = "Result<InstanceView, InstanceAdminError>")]
pub struct RemoveInstance(pub InstanceId);

#[derive(Debug, thiserror::Error)]
pub enum InstanceAdminError {
    #[error("no such instance")]
    NotFound,
    #[error("the instance is draining")]
    Draining,
    #[error("an instance of this kind with this url exists")]
    Exists,
    #[error("cannot store the instance: {0}")]
    Store(#[from] StoreError),
}

/// Whether an instance takes work, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    Healthy,
    /// Not probed yet: it takes no work, and requests wait for its first ping.
    Unknown,
    /// Not answering its pings.
    Unhealthy,
    /// Out of rotation after failed calls, until its ejection ends and a probe call
    /// succeeds.
    Ejected,
    /// Removed: takes no new work and goes once its last call ends.
    Draining,
    /// Switched off by an admin; still pinged, so it is ready when switched on.
    Disabled,
}

/// Where an instance comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceSource {
    /// settings.toml: changes last until the next start.
    Settings,
    /// Added through the admin API and kept in the database.
    Api,
}

/// One instance as operators and stats see it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceView {
    /// API instances: their database id; settings instances: from 1000000000001 on.
    #[schema(value_type = u64)]
    pub id: InstanceId,
    pub kind: InstanceKind,
    /// Without its userinfo, if it has any.
    pub url: String,
    pub protocol: Protocol,
    /// The model calls name (openai instances only; the kind's default when unset).
    pub model: Option<String>,
    pub capacity: u32,
    pub weight: u32,
    pub state: InstanceState,
    pub source: InstanceSource,
    pub in_flight: u32,
    pub completed: u64,
    pub failed: u64,
    /// Moving average of successful call latency, in milliseconds.
    pub latency_ms: Option<f64>,
    pub last_error: Option<String>,
    pub last_check: Option<DateTime<Utc>>,
}
