//! The coderun worker. Runs arrive with the runs issue; until then this crate only proves the
//! workspace shape (`functions` → `shared` ← `worker`) and loads the shared configuration.
