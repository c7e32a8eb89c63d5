//! The run environment: what every program finds, whichever executor runs it — its code in
//! `$CODE_PATH` (its working directory), a writable `$OUTPUT_DIR` whose files are collected,
//! read-only datasets under `$DATA_DIR/{name}`, its run id and attempt. Both executors build
//! their variables and mount points from here, so they cannot drift apart.

use uuid::Uuid;

/// Where the program finds its files (`$CODE_PATH`), and its working directory.
pub const CODE_PATH: &str = "/code";
/// Where the program may write files to be collected (`$OUTPUT_DIR`).
pub const OUTPUT_DIR: &str = "/output";
/// Where datasets are mounted read-only, one folder per dataset (`$DATA_DIR/{name}`).
pub const DATA_DIR: &str = "/data";
/// Where a pipeline step finds the outputs of the earlier stages' steps, read-only, one folder
/// per step (`$INPUT_DIR/{step name}/`). Set only for pipeline steps.
pub const INPUT_DIR: &str = "/input";

/// A pipeline step's parameters as the variables its program gets: `PARAM_<NAME>`.
pub fn param_vars(params: &coderun_shared::pipelines::Params) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(name, value)| (format!("PARAM_{name}"), value.clone()))
        .collect()
}

/// The variables of one run attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEnvironment {
    pub run_id: Uuid,
    /// 1 for the first attempt; more when an attempt was lost with its worker.
    pub attempt: i64,
}

impl RunEnvironment {
    pub fn new(run_id: Uuid, attempt: impl Into<i64>) -> Self {
        Self {
            run_id,
            attempt: attempt.into(),
        }
    }

    /// `(name, value)` of every variable the program is promised, in a fixed order.
    pub fn vars(&self) -> [(&'static str, String); 5] {
        [
            ("CODE_PATH", CODE_PATH.to_owned()),
            ("OUTPUT_DIR", OUTPUT_DIR.to_owned()),
            ("DATA_DIR", DATA_DIR.to_owned()),
            ("RUN_ID", self.run_id.to_string()),
            ("RUN_ATTEMPT", self.attempt.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_promised_variable_is_there_once() {
        let id = Uuid::new_v4();
        let vars = RunEnvironment::new(id, 2).vars();
        let names: Vec<_> = vars.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "CODE_PATH",
                "OUTPUT_DIR",
                "DATA_DIR",
                "RUN_ID",
                "RUN_ATTEMPT"
            ]
        );
        assert_eq!(vars[3].1, id.to_string());
        assert_eq!(vars[4].1, "2");
    }
}
