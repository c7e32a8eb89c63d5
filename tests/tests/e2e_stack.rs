//! `coderun-e2e-stack` as the web app's end-to-end tests use it: a child process that prints one
//! JSON line when ready, obeys `api-stop` / `api-start`, and exits when stdin closes or on
//! SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a stack may take to come up on a loaded machine (servers, migrations, sandbox check).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

struct Stack {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    base_url: String,
    users: Value,
}

impl Stack {
    fn start(args: &[&str]) -> Stack {
        let mut child = Command::new(env!("CARGO_BIN_EXE_coderun-e2e-stack"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start coderun-e2e-stack");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(READY_TIMEOUT)
            .expect("the stack prints its ready line");
        let ready: Value = serde_json::from_str(&first)
            .unwrap_or_else(|e| panic!("the ready line is not JSON ({e}): {first}"));
        Stack {
            child,
            stdin,
            lines,
            base_url: ready["base_url"].as_str().unwrap().to_owned(),
            users: ready["users"].clone(),
        }
    }

    /// Sends one command and returns the one-line answer.
    fn command(&mut self, command: &str) -> String {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no answer to {command}"))
    }

    fn port(&self) -> u16 {
        self.base_url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Waits for the process to exit, at most `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the stack did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn refuses_connections(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
}

async fn login(client: &reqwest::Client, base: &str, username: &str, password: &str) -> Value {
    let response = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "login as {username}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_stack_serves_seeded_users_runs_code_and_its_api_stops_and_starts_on_the_same_port() {
    let mut stack = Stack::start(&[]);
    assert!(stack.base_url.starts_with("http://127.0.0.1:"));
    assert_eq!(
        stack.users,
        json!({"admin": "admin", "teacher": "teacher", "alice": "alice", "bob": "bob"})
    );
    let base = stack.base_url.clone();
    let client = reqwest::Client::new();

    // Every user logs in with the password printed, with the promised role.
    for (username, role) in [
        ("admin", "admin"),
        ("teacher", "teacher"),
        ("alice", "student"),
        ("bob", "student"),
    ] {
        let password = stack.users[username].as_str().unwrap().to_owned();
        let login = login(&client, &base, username, &password).await;
        assert_eq!(login["user"]["role"], role, "{username}");
    }

    // The worker runs code: a program that prints a line, then keeps printing slowly.
    let token = login(&client, &base, "alice", "alice").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let task: Value = client
        .post(format!("{base}/api/v1/tasks"))
        .bearer_auth(&token)
        .json(&json!({"name": "e2e", "language": "python"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task_id = task["id"].as_str().unwrap();
    let saved = client
        .put(format!("{base}/api/v1/tasks/{task_id}/files/main.py"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("import time\nfor i in range(600):\n    print('line', i, flush=True)\n    time.sleep(0.1)\n")
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), 200);
    let run: Value = client
        .post(format!("{base}/api/v1/tasks/{task_id}/runs"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = run["id"].as_str().unwrap().to_owned();

    // A live log stream is open when the API stops: the stop cuts it, like a crash would.
    let mut stream = client
        .get(format!("{base}/api/v1/runs/{run_id}/log/stream"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(60), stream.chunk())
        .await
        .expect("the first log line arrives")
        .unwrap()
        .expect("a chunk");
    assert!(
        String::from_utf8_lossy(&first).contains("line 0"),
        "{first:?}"
    );

    assert_eq!(stack.command("api-stop"), "ok");
    assert!(refuses_connections(stack.port()), "the API still accepts");
    let cut = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(cut.is_ok(), "the open stream outlived api-stop");
    assert_eq!(stack.command("api-stop"), "ok", "stopping twice is fine");

    // Back on the same port; the run went on meanwhile (the worker kept running).
    assert_eq!(stack.command("api-start"), "ok");
    assert_eq!(stack.command("api-start"), "ok", "starting twice is fine");
    // A new client: the old one's pooled connections died with the stop.
    let client = reqwest::Client::new();
    let run: Value = client
        .get(format!("{base}/api/v1/runs/{run_id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["status"], "running", "{run}");
    let stopped = client
        .post(format!("{base}/api/v1/runs/{run_id}/stop"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.status(), 200);

    assert!(
        stack
            .command("make-coffee")
            .starts_with("error: unknown command"),
        "unknown commands are refused"
    );

    // Closing stdin ends the stack and its port.
    drop(stack.stdin.take());
    let status = stack.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}");
    assert!(refuses_connections(stack.port()));
}

#[tokio::test]
async fn the_stack_serves_the_web_app_and_exits_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("coderun-e2e-web-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("index.html"), "<!doctype html><title>app</title>").unwrap();
    let mut stack = Stack::start(&["--web-dir", dir.to_str().unwrap()]);
    let base = stack.base_url.clone();

    let page = reqwest::get(format!("{base}/tasks/some-task"))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(
        page.text().await.unwrap(),
        "<!doctype html><title>app</title>"
    );
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);

    let pid = stack.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = stack.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}");
    assert!(refuses_connections(stack.port()));
    std::fs::remove_dir_all(&dir).unwrap();
}
