//! The live log of a run while it executes: a Redis stream per run whose entry ids are the line
//! numbers (`{n}-1`, n from 1), so a page of 100 lines is one XRANGE. The executor caps what it
//! writes (the run's `log_max_bytes`); once the run ends `log.txt` in S3 is the record and the
//! stream expires.

use fred::prelude::*;
use fred::types::streams::XID;
use uuid::Uuid;

use crate::redis::Keys;

#[derive(Clone)]
pub struct LiveLog {
    client: Client,
    keys: Keys,
}

impl LiveLog {
    pub fn new(client: Client, keys: Keys) -> Self {
        Self { client, keys }
    }

    /// Appends `lines`, numbered from `first_line` (1-based), in one round trip.
    pub async fn append(&self, run: Uuid, first_line: u64, lines: &[String]) -> Result<(), Error> {
        if lines.is_empty() {
            return Ok(());
        }
        let key = self.keys.live_log(run);
        let pipeline = self.client.pipeline();
        for (i, line) in lines.iter().enumerate() {
            let id = format!("{}-1", first_line + i as u64);
            let _: () = pipeline
                .xadd(
                    &key,
                    false,
                    None,
                    XID::Manual(id.into()),
                    vec![("l", line.as_str())],
                )
                .await?;
        }
        let _: Vec<Value> = pipeline.all().await?;
        Ok(())
    }

    /// Lines `from..=to` (1-based, inclusive).
    pub async fn range(&self, run: Uuid, from: u64, to: u64) -> Result<Vec<String>, Error> {
        let entries: Vec<(String, std::collections::HashMap<String, String>)> = self
            .client
            .xrange_values(
                self.keys.live_log(run),
                format!("{from}-1"),
                format!("{to}-1"),
                None,
            )
            .await?;
        Ok(entries
            .into_iter()
            .map(|(_, mut fields)| fields.remove("l").unwrap_or_default())
            .collect())
    }

    /// How many lines the live log holds.
    pub async fn len(&self, run: Uuid) -> Result<u64, Error> {
        self.client.xlen(self.keys.live_log(run)).await
    }

    /// Lets the live log expire `seconds` from now (the run has ended).
    pub async fn expire(&self, run: Uuid, seconds: i64) -> Result<(), Error> {
        self.client
            .expire::<(), _>(self.keys.live_log(run), seconds, None)
            .await
    }
}
