//! The web app's copy of the API contract (`web/openapi.json`, from which its TypeScript types
//! are generated) must be what the server serves: a change of the contract then fails here,
//! and the refreshed copy fails the app's build where the app no longer fits, instead of
//! failing its users.

use std::path::Path;
use std::process::Command;

const REFRESH: &str = "cargo run -q -p coderun-functions -- openapi > web/openapi.json";

#[test]
fn the_web_apps_copy_of_the_openapi_document_is_current() {
    // The subcommand needs no configuration at all: run it with an empty environment.
    let output = Command::new(env!("CARGO_BIN_EXE_coderun-functions"))
        .arg("openapi")
        .env_clear()
        .output()
        .expect("run coderun-functions openapi");
    assert!(
        output.status.success(),
        "coderun-functions openapi failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the subcommand prints JSON");
    assert_eq!(
        printed,
        serde_json::to_value(coderun_functions::openapi::document()).unwrap(),
        "the subcommand prints the served document"
    );

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); create it with: {REFRESH}",
            path.display()
        )
    });
    let committed: serde_json::Value = serde_json::from_str(&committed).unwrap_or_else(|e| {
        panic!("web/openapi.json is not JSON ({e}); refresh it with: {REFRESH}")
    });
    assert!(
        committed == printed,
        "web/openapi.json differs from the API's OpenAPI document: the contract changed. \
         Refresh the copy with `{REFRESH}`, then rebuild the web app (`npm run build` in web/), \
         whose types are generated from it, and fix what no longer fits."
    );
}
