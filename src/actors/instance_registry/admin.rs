//! Admins' changes: add, change, drain and remove. For API instances the row is written
//! first and the running set follows once it has committed, so a failed write changes
//! nothing; instances from settings.toml change in memory only, until the next start.

use actix::prelude::*;

use super::Instance;
use super::InstanceRegistry;
use crate::actors::messages::{
    AddInstance, InstanceAdminError, InstanceSource, InstanceView, RemoveInstance, UpdateInstance,
};
use crate::domain::{InstanceChange, InstanceId};
use crate::store::{instances, notify, StoreError};

type AdminResult = Result<InstanceView, InstanceAdminError>;

impl InstanceRegistry {
    fn index_of(&self, id: InstanceId) -> Result<usize, InstanceAdminError> {
        self.instances
            .iter()
            .position(|i| i.id == id)
            .ok_or(InstanceAdminError::NotFound)
    }

    /// No new work from now on; gone once its last call ends.
    fn drain(&mut self, index: usize) -> InstanceView {
        let instance = &mut self.instances[index];
        instance.draining = true;
        tracing::info!(instance = %instance.shown_url(), id = %instance.id, in_flight = instance.in_flight, "instance draining");
        let view = instance.view();
        self.remove_if_drained(index);
        self.report_capacity();
        view
    }

    /// With several gateways: the others reload the instances, and the call slots follow
    /// the capacity.
    fn announce_change(&mut self, ctx: &mut Context<Self>) {
        if self.shared.is_none() {
            return;
        }
        self.ensure_slots(ctx);
        let db = self.db.clone();
        ctx.spawn(
            async move {
                if let Err(e) = notify(&db, "i").await {
                    tracing::warn!(error = %e, "cannot tell the other gateways of an instance change; they see it at their next resync");
                }
            }
            .into_actor(self),
        );
    }

    /// After any change that may add room or capacity.
    fn changed(&mut self, ctx: &mut Context<Self>) {
        self.report_capacity();
        self.serve_waiters(ctx);
    }
}

impl Instance {
    fn apply(&mut self, change: &InstanceChange) {
        self.spec.capacity = change.capacity.unwrap_or(self.spec.capacity);
        self.spec.weight = change.weight.unwrap_or(self.spec.weight);
        self.enabled = change.enabled.unwrap_or(self.enabled);
    }
}

/// Persists the instance, then pings it at once; it takes work after its first good ping.
impl Handler<AddInstance> for InstanceRegistry {
    type Result = ResponseActFuture<Self, AdminResult>;

    fn handle(&mut self, AddInstance(spec): AddInstance, _: &mut Context<Self>) -> Self::Result {
        // Also catches one from settings.toml, or one still draining; the unique index
        // catches two adds racing each other.
        if self.instances.iter().any(|i| i.spec.same_backend(&spec)) {
            return Box::pin(fut::ready(Err(InstanceAdminError::Exists)));
        }
        let db = self.db.clone();
        let insert = async move { instances::insert(&db, &spec).await };
        Box::pin(insert.into_actor(self).map(|inserted, registry, ctx| {
            let row = inserted.map_err(|e| match e {
                StoreError::Constraint(_) => InstanceAdminError::Exists,
                other => other.into(),
            })?;
            let instance = Instance::from_row(row);
            let (id, view) = (instance.id, instance.view());
            tracing::info!(instance = %view.url, %id, "instance added");
            registry.instances.push(instance);
            registry.schedule_ping(id, std::time::Duration::ZERO, ctx);
            registry.report_capacity();
            registry.announce_change(ctx);
            Ok(view)
        }))
    }
}

/// Capacity, weight or enabled; not on a draining instance.
impl Handler<UpdateInstance> for InstanceRegistry {
    type Result = ResponseActFuture<Self, AdminResult>;

    fn handle(&mut self, msg: UpdateInstance, ctx: &mut Context<Self>) -> Self::Result {
        let index = match self.index_of(msg.id) {
            Ok(index) if self.instances[index].draining => Err(InstanceAdminError::Draining),
            other => other,
        };
        let index = match index {
            Ok(index) => index,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        if self.instances[index].source == InstanceSource::Settings {
            self.instances[index].apply(&msg.change);
            let view = self.instances[index].view();
            self.changed(ctx);
            return Box::pin(fut::ready(Ok(view)));
        }
        let db = self.db.clone();
        let update = async move { instances::update(&db, msg.id.0 as i64, &msg.change).await };
        Box::pin(update.into_actor(self).map(move |updated, registry, ctx| {
            // No row: removed meanwhile.
            let row = updated?.ok_or(InstanceAdminError::NotFound)?;
            let index = registry.index_of(msg.id)?;
            let instance = &mut registry.instances[index];
            // Another change that committed later may have been applied already.
            if row.revision > instance.revision {
                instance.revision = row.revision;
                instance.apply(&InstanceChange {
                    capacity: Some(row.capacity as u32),
                    weight: Some(row.weight as u32),
                    enabled: Some(row.enabled),
                });
            }
            let view = instance.view();
            registry.changed(ctx);
            registry.announce_change(ctx);
            Ok(view)
        }))
    }
}

/// Drains the instance and, for an API instance, deletes its row at once, so a restart
/// during the drain does not bring it back. Again on a draining instance: its view.
impl Handler<RemoveInstance> for InstanceRegistry {
    type Result = ResponseActFuture<Self, AdminResult>;

    fn handle(
        &mut self,
        RemoveInstance(id): RemoveInstance,
        _: &mut Context<Self>,
    ) -> Self::Result {
        let index = match self.index_of(id) {
            Ok(index) => index,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        let instance = &self.instances[index];
        if instance.draining {
            return Box::pin(fut::ready(Ok(instance.view())));
        }
        if instance.source == InstanceSource::Settings {
            return Box::pin(fut::ready(Ok(self.drain(index))));
        }
        let db = self.db.clone();
        let delete = async move { instances::delete(&db, id.0 as i64).await };
        Box::pin(delete.into_actor(self).map(move |deleted, registry, ctx| {
            deleted?;
            let index = registry.index_of(id)?;
            let instance = &registry.instances[index];
            if instance.draining {
                return Ok(instance.view());
            }
            registry.announce_change(ctx);
            Ok(registry.drain(index))
        }))
    }
}
