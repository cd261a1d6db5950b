//! The ids that travel between the HTTP layer, the actors and the store, each its own
//! type so a task id is never passed where a user id belongs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A task's public id (a UUID v4 in text), the one clients poll with.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// A fresh random id.
    pub fn generate() -> TaskId {
        TaskId(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl From<String> for TaskId {
    /// Any text a client names a task by; an id that names no task is simply not found.
    fn from(id: String) -> TaskId {
        TaskId(id)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One gateway process among several on one PostgreSQL database: its host, its pid and
/// a random part, so a restarted process is a new node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    pub fn generate(host: &str) -> NodeId {
        let random = uuid::Uuid::new_v4().simple().to_string();
        NodeId(format!("{host}-{}-{}", std::process::id(), &random[..8]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

numeric_id!(
    /// A user's database id.
    UserId(i64)
);
numeric_id!(
    /// A stored image's id, as in `result_url` (`/api/images/{id}`).
    ImageId(i64)
);
numeric_id!(
    /// A backend instance's id: its database id, or above `SETTINGS_ID_BASE` for one
    /// from settings.toml.
    InstanceId(u64)
);
