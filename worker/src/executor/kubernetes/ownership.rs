//! Which worker does a run's one-worker work — following its log, storing `log.txt` and the
//! outputs, finishing it, giving up on an image. Every worker observes every Job, but only the
//! holder of the run's capacity permit (its *owner*) does that work.
//!
//! The rule it keeps: a live owner is never displaced. A worker claims a run only from a dead
//! holder, or when nobody holds it, by compare-and-swap on the permit — so a Job that outlived
//! its worker is adopted by exactly one other, never run twice.

use std::sync::RwLock;

use coderun_shared::runs::Run;
use coderun_shared::semaphore::Grant;

use crate::supervisor::{Holders, Supervisor};

/// The permits' holders as last read (every tick), updated by this worker's own claims.
#[derive(Default)]
pub(super) struct Ownership {
    holders: RwLock<Holders>,
}

impl Ownership {
    /// Reads who holds which permit, and which holders are alive.
    pub(super) async fn refresh(&self, supervisor: &Supervisor) -> anyhow::Result<()> {
        let holders = supervisor.holders().await?;
        *self.holders.write().expect("holders") = holders;
        Ok(())
    }

    /// Whether the run's permit is, as last read, held by another worker that is alive: that
    /// worker does the run's work and records its phases; this one only keeps watching.
    pub(super) fn held_elsewhere(&self, me: &str, run: uuid::Uuid) -> bool {
        let holders = self.holders.read().expect("holders");
        holders
            .of
            .get(&run)
            .is_some_and(|holder| holder != me && holders.alive.contains(holder))
    }

    /// Notes that this worker holds the run's permit (it has just launched the run), so its
    /// first look needs no claim.
    pub(super) fn hold(&self, me: &str, run: uuid::Uuid) {
        self.holders
            .write()
            .expect("holders")
            .of
            .insert(run, me.to_owned());
    }

    /// Whether this worker owns `run` now: it holds the run's permit, or has just taken it
    /// from a dead holder or from nobody. Never from a live holder.
    pub(super) async fn claim(&self, supervisor: &Supervisor, run: &Run) -> bool {
        let me = supervisor.me();
        let holder = {
            let holders = self.holders.read().expect("holders");
            match holders.of.get(&run.id) {
                Some(holder) if holder == me => return true,
                Some(holder) if holders.alive.contains(holder) => return false,
                holder => holder.cloned(),
            }
        };
        let holder = match supervisor.adopt(run, holder.as_deref()).await {
            Ok(Grant::Granted) => {
                if let Some(dead) = &holder {
                    tracing::info!(run = %run.id, %dead, "adopted a run whose worker is gone");
                }
                me.to_owned()
            }
            Ok(Grant::HeldBy(holder)) => holder,
            Ok(Grant::Full) => return false,
            Err(e) => {
                tracing::warn!(run = %run.id, error = %e, "cannot claim the run's permit");
                return false;
            }
        };
        let mine = holder == me;
        self.holders
            .write()
            .expect("holders")
            .of
            .insert(run.id, holder);
        mine
    }
}
