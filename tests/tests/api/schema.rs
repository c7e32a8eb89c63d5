//! Migrating is a step of its own (`coderun-functions migrate`); both servers only check the
//! schema at start and refuse one older than they are, naming that step.

use coderun_functions::{cli, state::AppState};
use coderun_shared::config::Settings;
use coderun_shared::db::{self, MIGRATOR};
use coderun_tests::app::{empty_database, fresh_bucket, test_settings};
use coderun_tests::servers::TestServers;
use sqlx::PgPool;

fn settings_for(database: &str) -> Settings {
    Settings::with_overrides(test_settings(database, &fresh_bucket())).unwrap()
}

/// Why `AppState::build` and `Context::build` refuse `settings`, as their messages.
async fn refusals(settings: &Settings) -> (String, String) {
    let api = AppState::build(settings.clone())
        .await
        .err()
        .expect("the API refuses the database");
    let worker = coderun_worker::Context::build(settings.clone())
        .await
        .err()
        .expect("the worker refuses the database");
    (format!("{api:#}"), format!("{worker:#}"))
}

#[tokio::test]
async fn both_servers_refuse_a_database_without_a_schema_until_it_is_migrated() {
    let database = empty_database().await;
    let settings = settings_for(&database);
    for refusal in <[String; 2]>::from(refusals(&settings).await) {
        assert!(refusal.contains("no coderun schema"), "{refusal}");
        assert!(refusal.contains("coderun-functions migrate"), "{refusal}");
    }

    cli::migrate(&settings).await.expect("the migrate step");
    AppState::build(settings.clone())
        .await
        .expect("the API starts on the migrated database");
    // The step may run again (every release runs it): nothing is pending, nothing changes.
    cli::migrate(&settings).await.expect("migrate again");
}

#[tokio::test]
async fn both_servers_refuse_a_schema_older_than_theirs_and_name_the_missing_migration() {
    let versions: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    let (latest, older) = match versions.as_slice() {
        [.., older, latest] => (*latest, *older),
        _ => panic!("at least two migrations"),
    };
    let database = empty_database().await;
    let pool = PgPool::connect(&TestServers::get().database_url(&database))
        .await
        .unwrap();
    MIGRATOR.run_to(older, &pool).await.unwrap();
    assert!(db::check_schema(&pool).await.is_err());

    let settings = settings_for(&database);
    for refusal in <[String; 2]>::from(refusals(&settings).await) {
        assert!(
            refusal.contains(&format!("migration {latest} ")),
            "{refusal}"
        );
        assert!(refusal.contains("coderun-functions migrate"), "{refusal}");
    }
    cli::migrate(&settings).await.unwrap();
    db::check_schema(&pool)
        .await
        .expect("current after the step");
    pool.close().await;
}
