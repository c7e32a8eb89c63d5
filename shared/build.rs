//! `sqlx::migrate!` embeds the migrations when the crate compiles; without this, cargo would not
//! notice a new migration file and an incremental build would keep the old set.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
