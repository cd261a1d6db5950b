//! Whether the user behind a token or a device key may still act: their row must exist
//! and not be disabled. A JWT says who its bearer was when it was issued; this says who
//! they are now, so removing or disabling a user shuts their tokens and keys out.
//!
//! Looked up on every authenticated request, the answer is remembered for
//! `auth.user_cache_secs` (0: never), which bounds how long a removed or disabled user's
//! token keeps working in a process that did not do the removal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sea_orm::DatabaseConnection;

use super::AuthError;
use crate::domain::{Role, UserId};
use crate::store::users;

/// Users remembered at most; past this the memory is emptied and refilled by lookups.
const MAX_REMEMBERED: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// With the role the user has now.
    Active(Role),
    Gone,
    Disabled,
}

/// The check, with its short memory, shared by every HTTP worker.
pub struct UserStanding {
    db: DatabaseConnection,
    ttl: Duration,
    /// Each user's standing and when it was looked up.
    seen: Mutex<HashMap<UserId, (Instant, Standing)>>,
}

impl UserStanding {
    pub fn new(db: DatabaseConnection, ttl: Duration) -> UserStanding {
        UserStanding {
            db,
            ttl,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The user's role now, when they exist and are not disabled.
    pub async fn check(&self, user_id: UserId) -> Result<Role, AuthError> {
        let remembered = self.remembered(user_id);
        let standing = match remembered {
            Some(standing) => standing,
            None => {
                let standing = match users::find_by_id(&self.db, user_id.0).await? {
                    None => Standing::Gone,
                    Some(user) if user.disabled => Standing::Disabled,
                    Some(user) => Standing::Active(user.role),
                };
                self.remember(user_id, standing);
                standing
            }
        };
        match standing {
            Standing::Active(role) => Ok(role),
            Standing::Gone => Err(AuthError::UserGone),
            Standing::Disabled => Err(AuthError::Disabled),
        }
    }

    fn remembered(&self, user_id: UserId) -> Option<Standing> {
        if self.ttl.is_zero() {
            return None;
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&user_id)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|&(_, standing)| standing)
    }

    fn remember(&self, user_id: UserId, standing: Standing) {
        if self.ttl.is_zero() {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_REMEMBERED {
            seen.clear();
        }
        seen.insert(user_id, (Instant::now(), standing));
    }

    /// Forgets the user, so the next request looks again (after a change made here).
    pub fn forget(&self, user_id: UserId) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.remove(&user_id);
    }
}
