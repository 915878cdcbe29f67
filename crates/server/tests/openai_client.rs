//! The official `openai` Python client against a live server: runs `openai_client.py` and fails
//! if it fails. Without the package the test is skipped, unless KESTREL_REQUIRE_OPENAI=1 (CI,
//! after `pip install openai`), where it fails.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kestrel_server::ServerConfig;

const KEY: &str = "sk-kestrel-test";

#[test]
fn official_openai_client_works() {
    let required = std::env::var("KESTREL_REQUIRE_OPENAI").is_ok_and(|v| v == "1");
    let import = Command::new("python3")
        .args(["-c", "import openai"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !import.is_ok_and(|s| s.success()) {
        assert!(
            !required,
            "KESTREL_REQUIRE_OPENAI=1 but `python3 -c 'import openai'` fails: pip install openai"
        );
        eprintln!("skipping: the Python package `openai` is not installed (pip install openai)");
        return;
    }
    let config = ServerConfig {
        api_key: Some(KEY.into()),
        parallel: 4,
        ..Default::default()
    };
    let Some(server) = common::start(config, 1024) else {
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let t0 = Instant::now();
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--base-url", &server.url(), "--api-key", KEY])
        .spawn()
        .expect("run python3");
    // Bounded in time: kill the script if it hangs.
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for python3") {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            panic!("openai_client.py ran past 300 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("openai_client.py: {:.1} s", t0.elapsed().as_secs_f64());
    assert!(
        status.success(),
        "openai_client.py failed ({status}); see its output above"
    );
}
