//! `pubsubpull demo` tried as a new user would: started, watched until its output shows a change
//! with its context, the PUT its subscriber received and a pull, then stopped with Ctrl-C (SIGINT),
//! after which it exits cleanly and its throwaway PostgreSQL is gone.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn the_demo_shows_changes_context_deliveries_and_pulls_then_stops_on_ctrl_c() {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_pubsubpull"))
        .args(["demo", "--listen", "127.0.0.1:0", "--pg-bindir"])
        .arg(support::bindir())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start pubsubpull demo");
    let (lines, received) = mpsc::channel();
    let stdout = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });

    let wanted = [
        // scripts/test installs the C trigger, as scripts/demo does.
        "its context trigger: pubsubpull.capture_context_native()",
        "PUT received",
        "insert public.customers key {\"id\":1} by alice via POST /customers",
        "update public.customers key {\"id\":1} by \"postgres\" (\"nightly-cron\") with no application context",
        "GET http://",
        "/tables/public.customers/rows -> {",
    ];
    let mut output = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !wanted.iter().all(|w| output.iter().any(|line: &String| line.contains(w))) {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => output.push(line),
            Err(_) => panic!("the demo did not show everything; its output:\n{}", output.join("\n")),
        }
    }
    let cluster_dir =
        output[0].split(" in ").nth(1).and_then(|rest| rest.split(' ').next()).unwrap().to_owned();
    assert!(std::path::Path::new(&cluster_dir).exists(), "{cluster_dir}");

    let interrupted = Command::new("kill").args(["-INT", &demo.id().to_string()]).status().unwrap();
    assert!(interrupted.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = demo.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    while let Ok(line) = received.recv_timeout(Duration::from_secs(1)) {
        output.push(line);
    }
    assert!(status.success(), "the demo exits cleanly on Ctrl-C: {status}\n{}", output.join("\n"));
    assert!(output.last().unwrap().contains("stopped"), "{}", output.join("\n"));
    assert!(!std::path::Path::new(&cluster_dir).exists(), "the throwaway cluster is deleted");
}
