//! The four language runtimes through the local executor, from HTTP submit to the end of the
//! run: each language's default files with its default command, a small data program, a
//! program of two files, the smallest spec for Java, and no host tools inside.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Platform, platform};

const T: Duration = Duration::from_secs(180);

/// A task of `language` holding `files` (besides its default files), submitted with `body`;
/// returns the finished run and its log.
async fn run_task(
    p: &Platform,
    language: &str,
    files: &[(&str, &str)],
    body: Value,
) -> (Value, Vec<String>) {
    let task = p.app.task(&p.token, language, language).await;
    let task_id = task["id"].as_str().unwrap();
    for (path, content) in files {
        let put = p
            .app
            .put_text(
                &format!("/api/v1/tasks/{task_id}/files/{path}"),
                &p.token,
                content,
            )
            .await;
        // 200 replaces a default file, 201 creates one.
        assert!(
            put.status == 200 || put.status == 201,
            "{path}: {}",
            put.status
        );
    }
    let run = p.app.submit(&p.token, task_id, body).await;
    let id = run["id"].as_str().unwrap().to_owned();
    let run = p.wait_terminal(&id, T).await;
    let (lines, _) = p.log(&id).await;
    (run, lines)
}

fn assert_succeeded(language: &str, run: &Value, lines: &[String]) {
    assert_eq!(run["status"], "succeeded", "{language}: {run} {lines:?}");
    assert_eq!(run["exit_code"], 0, "{language}: {run}");
}

#[tokio::test]
async fn every_language_runs_its_default_files_with_its_default_command() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    for language in ["python", "r", "java", "scala"] {
        let (run, lines) = run_task(&p, language, &[], json!({"spec": "medium"})).await;
        assert_succeeded(language, &run, &lines);
        assert!(
            lines.iter().any(|l| l == "Hello from coderun!"),
            "{language}: {lines:?}"
        );
    }
    worker.stop().await;
}

#[tokio::test]
async fn python_and_r_sum_a_csv_dataset() {
    let p = platform(vec![]).await;
    let mut csv = String::from("name,score\n");
    for i in 1..=100 {
        csv.push_str(&format!("student{i},{i}\n"));
    }
    p.app
        .publish_dataset("scores", &[("scores.csv", csv.as_bytes())])
        .await;
    let worker = p.worker("w").await;
    let python = "import os\nimport pandas as pd\n\
                  df = pd.read_csv(os.path.join(os.environ['DATA_DIR'], 'scores', 'scores.csv'))\n\
                  print('pandas', pd.__version__.split('.')[0], 'sum', df['score'].sum())\n";
    let r = "library(data.table)\n\
             d <- fread(file.path(Sys.getenv('DATA_DIR'), 'scores', 'scores.csv'))\n\
             cat('data.table sum', sum(d$score), '\\n')\n\
             cat('base sum', sum(read.csv(file.path(Sys.getenv('DATA_DIR'), 'scores', 'scores.csv'))$score), '\\n')\n";
    for (language, file, code, expected) in [
        ("python", "main.py", python, vec!["pandas 1 sum 5050"]),
        (
            "r",
            "main.R",
            r,
            vec!["data.table sum 5050 ", "base sum 5050 "],
        ),
    ] {
        let body = json!({"spec": "medium", "datasets": ["scores"]});
        let (run, lines) = run_task(&p, language, &[(file, code)], body).await;
        assert_succeeded(language, &run, &lines);
        assert_eq!(lines, expected, "{language}");
    }
    worker.stop().await;
}

#[tokio::test]
async fn java_and_scala_compile_and_run_a_program_of_two_files() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    let java = [
        (
            "Main.java",
            "public class Main {\n    public static void main(String[] args) {\n        \
             System.out.println(new Greeter(\"java\").greeting());\n    }\n}\n",
        ),
        (
            "Greeter.java",
            "public class Greeter {\n    private final String who;\n    \
             Greeter(String who) { this.who = who; }\n    \
             String greeting() { return \"two files from \" + who; }\n}\n",
        ),
    ];
    let scala = [
        (
            "Main.scala",
            "object Main {\n  def main(args: Array[String]): Unit =\n    \
             println(Greeter.greeting(\"scala\"))\n}\n",
        ),
        (
            "Greeter.scala",
            "object Greeter {\n  def greeting(who: String): String = s\"two files from $who\"\n}\n",
        ),
    ];
    for (language, files) in [("java", &java), ("scala", &scala)] {
        let (run, lines) = run_task(&p, language, files, json!({"spec": "medium"})).await;
        assert_succeeded(language, &run, &lines);
        assert!(
            lines.contains(&format!("two files from {language}")),
            "{language}: {lines:?}"
        );
    }
    worker.stop().await;
}

#[tokio::test]
async fn java_with_256_mib_runs_its_default_command_within_its_memory() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    assert_eq!(p.settings().specs["small"].memory_mib, 256);
    // The default Main.java plus a second class that fills most of the heap the JVM allowed
    // itself: a heap sized from the host's memory would let the run grow past 256 MiB.
    let filler = "public class Filler {\n    static { \n        \
                  long max = Runtime.getRuntime().maxMemory();\n        \
                  java.util.List<byte[]> kept = new java.util.ArrayList<>();\n        \
                  try { while (true) kept.add(new byte[1 << 20]); }\n        \
                  catch (OutOfMemoryError e) { int n = kept.size(); kept.clear();\n            \
                  System.out.println(\"heap max \" + (max >> 20) + \" filled \" + n); }\n    }\n}\n";
    let main = "public class Main {\n    public static void main(String[] args) throws Exception {\n        \
                Class.forName(\"Filler\");\n        System.out.println(\"Hello from coderun!\");\n    }\n}\n";
    let (run, lines) = run_task(
        &p,
        "java",
        &[("Main.java", main), ("Filler.java", filler)],
        json!({"spec": "small"}),
    )
    .await;
    assert_succeeded("java", &run, &lines);
    assert_eq!(run["spec"]["name"], "small");
    assert!(
        lines.iter().any(|l| l == "Hello from coderun!"),
        "{lines:?}"
    );
    let heap: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("heap max "))
        .and_then(|l| l.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(heap <= 128, "heap {heap} MiB in a 256 MiB run: {lines:?}");
    worker.stop().await;
}

#[tokio::test]
async fn a_program_looking_for_host_tools_finds_none() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    let code = "import shutil\n\
                for tool in ['gcc', 'cc', 'curl', 'wget', 'sudo', 'make', 'cargo']:\n\
                \x20   print(tool, shutil.which(tool))\n";
    let (run, lines) = run_task(&p, "python", &[("main.py", code)], json!({})).await;
    assert_succeeded("python", &run, &lines);
    assert_eq!(
        lines,
        [
            "gcc None",
            "cc None",
            "curl None",
            "wget None",
            "sudo None",
            "make None",
            "cargo None"
        ]
    );
    worker.stop().await;
}
