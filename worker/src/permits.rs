//! `Permits`: this worker's side of the fleet's capacity — the whole life of a permit in one
//! type: reserve a seat before reading, bind it to the run read, renew it while the run is
//! watched, take it over from a dead worker, give it back. The consumer, the janitor, the
//! reconciler, the heartbeat and the supervisor all go through it; nothing else touches the
//! semaphore.
//!
//! The rule it keeps: a run's permit lives at least the run's wall time plus grace, so a permit
//! nobody renews only expires once its execution is certainly dead; and every call is
//! idempotent, so a retry after a lost answer finds it done.

use coderun_shared::config::Settings;
use coderun_shared::semaphore::{Grant, Holding, LeaseSemaphore, Member};
use fred::error::Error;
use uuid::Uuid;

/// A seat held before reading an entry; it becomes the permit of the run read, or is given
/// back. Unreturned, it expires after one blocking read.
#[derive(Debug)]
pub struct Reservation(String);

impl Reservation {
    fn token(&self) -> &str {
        &self.0
    }
}

/// The permits this worker holds, and the rules of their lifetimes.
#[derive(Clone)]
pub struct Permits {
    semaphore: LeaseSemaphore,
    /// This worker's name: the owner written on every permit it takes.
    owner: String,
    lease_grace_seconds: u64,
    reservation_ttl_ms: u64,
    /// The longest wall time of any spec: renewals use it, so a renewal never needs the run.
    longest_wall_seconds: u32,
}

impl Permits {
    pub fn new(semaphore: LeaseSemaphore, owner: String, settings: &Settings) -> Self {
        Self {
            semaphore,
            owner,
            lease_grace_seconds: settings.capacity.lease_grace_seconds,
            // Long enough to cover one blocking read.
            reservation_ttl_ms: settings.queue.block_ms + 10_000,
            longest_wall_seconds: settings
                .specs
                .values()
                .map(|s| s.wall_seconds)
                .max()
                .unwrap_or(0),
        }
    }

    /// The worker whose permits these are.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The TTL of a run's permit: its wall time plus grace.
    pub fn lease_ttl_ms(&self, wall_seconds: u32) -> u64 {
        (u64::from(wall_seconds) + self.lease_grace_seconds) * 1000
    }

    /// Reserves a seat; `None` when every permit is taken.
    pub async fn reserve(&self) -> Result<Option<Reservation>, Error> {
        let token = LeaseSemaphore::reservation(&self.owner);
        let grant = self
            .semaphore
            .acquire(&token, &self.owner, self.reservation_ttl_ms)
            .await?;
        Ok((grant == Grant::Granted).then_some(Reservation(token)))
    }

    /// Reserves up to `wanted` seats in one call — as many as are free; none when every permit
    /// is taken.
    pub async fn reserve_many(&self, wanted: u32) -> Result<Vec<Reservation>, Error> {
        let prefix = LeaseSemaphore::reservation(&self.owner);
        Ok(self
            .semaphore
            .reserve_many(&prefix, &self.owner, self.reservation_ttl_ms, wanted)
            .await?
            .into_iter()
            .map(Reservation)
            .collect())
    }

    /// Gives reservations back in one call, as [`Self::cancel`] does each.
    pub async fn cancel_many(&self, reservations: Vec<Reservation>) {
        let tokens: Vec<String> = reservations.into_iter().map(|r| r.0).collect();
        if let Err(e) = self.semaphore.release_many(&tokens).await {
            tracing::debug!(error = %e, "cannot release the reservations; they expire by themselves");
        }
    }

    /// [`Self::acquire`] with a reservation for each `(run, wall_seconds, reservation)`, in
    /// one call; one grant per run, in order.
    pub async fn acquire_many(
        &self,
        runs: &[(Uuid, u32, &Reservation)],
    ) -> Result<Vec<Grant>, Error> {
        let binds: Vec<(&str, Uuid, u64)> = runs
            .iter()
            .map(|(run, wall, reservation)| (reservation.token(), *run, self.lease_ttl_ms(*wall)))
            .collect();
        self.semaphore.bind_many(&self.owner, &binds).await
    }

    /// Gives the permits of `runs` back in one call.
    pub async fn release_many(&self, runs: &[Uuid]) -> Result<(), Error> {
        let members: Vec<String> = runs.iter().map(Uuid::to_string).collect();
        self.semaphore.release_many(&members).await
    }

    /// Gives a reservation back — a no-op once it became a run's permit. If Redis cannot be
    /// reached the seat simply expires.
    pub async fn cancel(&self, reservation: Reservation) {
        if let Err(e) = self.semaphore.release(reservation.token()).await {
            tracing::debug!(error = %e, "cannot release the reservation; it expires by itself");
        }
    }

    /// Takes the permit of `run` (executing at most `wall_seconds`): the reservation's seat
    /// becomes the run's, or, without one (an entry claimed from another consumer), a free seat.
    pub async fn acquire(
        &self,
        run: Uuid,
        wall_seconds: u32,
        reservation: Option<&Reservation>,
    ) -> Result<Grant, Error> {
        let ttl = self.lease_ttl_ms(wall_seconds);
        match reservation {
            Some(reservation) => {
                self.semaphore
                    .bind(reservation.token(), run, &self.owner, ttl)
                    .await
            }
            None => {
                self.semaphore
                    .acquire(&run.to_string(), &self.owner, ttl)
                    .await
            }
        }
    }

    /// Takes over the permit of `run` from `holder` (a dead worker; `None`: nobody holds it),
    /// giving up `reservation` if any. Compare-and-swap: a permit that changed hands meanwhile
    /// is left alone and its holder named. The execution exists already, so capacity is not
    /// checked: it is consumed whether or not its permit survived.
    pub async fn take_over(
        &self,
        run: Uuid,
        wall_seconds: u32,
        holder: Option<&str>,
        reservation: Option<&Reservation>,
    ) -> Result<Grant, Error> {
        self.semaphore
            .take_over(
                run,
                holder.unwrap_or(""),
                &self.owner,
                self.lease_ttl_ms(wall_seconds),
                reservation.map(Reservation::token),
            )
            .await
    }

    /// Extends the permit of a run this worker executes or watches, re-creating it if it lapsed
    /// (or Redis lost it): the execution consumes capacity either way.
    pub async fn renew(&self, run: Uuid) -> Result<Grant, Error> {
        self.semaphore
            .renew(
                &run.to_string(),
                &self.owner,
                self.lease_ttl_ms(self.longest_wall_seconds),
            )
            .await
    }

    /// [`Self::renew`] for each of `runs`, in one call per 512 runs (a call blocks Redis while
    /// it runs, so none holds it for long).
    pub async fn renew_many(&self, runs: &[Uuid]) -> Result<(), Error> {
        let ttl = self.lease_ttl_ms(self.longest_wall_seconds);
        for chunk in runs.chunks(512) {
            let members: Vec<String> = chunk.iter().map(Uuid::to_string).collect();
            self.semaphore
                .renew_many(&members, &self.owner, ttl)
                .await?;
        }
        Ok(())
    }

    /// Gives the permit of `run` back; a permit nobody holds is a no-op.
    pub async fn release(&self, run: Uuid) -> Result<(), Error> {
        self.semaphore.release(&run.to_string()).await
    }

    /// Gives back a permit whose holder is gone or whose run has ended (the reconciler).
    pub async fn release_stale(&self, member: &Member) -> Result<(), Error> {
        self.semaphore.release(&member.key()).await
    }

    /// Every permit held in the fleet, with its holder.
    pub async fn holders(&self) -> Result<Vec<Holding>, Error> {
        self.semaphore.holders().await
    }

    /// Permits held in the fleet now.
    pub async fn in_use(&self) -> Result<u32, Error> {
        self.semaphore.in_use().await
    }

    /// The fleet's capacity in force.
    pub async fn capacity(&self) -> Result<u32, Error> {
        self.semaphore.capacity().await
    }
}
