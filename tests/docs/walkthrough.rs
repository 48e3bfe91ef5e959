//! README's demo walkthrough, run as written: the real binary on the shipped demo config
//! (its listeners on ephemeral ports), each command of the README's block run by bash with
//! curl, and each checked for the status its `# -> STATUS` documents. A command without a
//! documented status fails the test, so the walkthrough cannot grow unchecked.

use std::process::Command;

use crate::support::{write_config, Process, PATIENCE};

/// One step of the walkthrough: a command and the status it documents, or a plain
/// variable assignment (`C="curl ..."`) that sets the next ones up.
#[derive(Debug)]
struct Step {
    command: String,
    status: Option<u16>,
}

/// The README's walkthrough block: the first `sh` block of "## Demo credentials".
fn walkthrough() -> Vec<Step> {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let section = &readme[readme.find("\n## Demo credentials").expect("README has a demo section")..];
    let block = &section[section.find("```sh\n").expect("a sh block in the demo section") + 6..];
    let block = &block[..block.find("\n```").unwrap()];
    // Logical lines: a trailing backslash continues a line.
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for l in block.lines() {
        match l.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(l);
                lines.push(std::mem::take(&mut cur));
            }
        }
    }
    let plain_assignment = |l: &str| {
        l.split_once('=').is_some_and(|(name, value)| {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                && value.starts_with('"')
                && value.ends_with('"')
                && !value.contains(['$', '`'])
        })
    };
    lines
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.rfind("# -> ") {
            Some(i) => {
                let status = l[i + 5..].split_whitespace().next().and_then(|s| s.parse().ok());
                assert!(
                    status.is_some(),
                    "README walkthrough: `{l}` documents no status after `# -> `"
                );
                Step {
                    command: l[..i].trim_end().to_string(),
                    status,
                }
            }
            None => {
                assert!(
                    plain_assignment(l.trim()),
                    "README walkthrough: `{l}` documents no status: end it with `# -> STATUS`"
                );
                Step {
                    command: l,
                    status: None,
                }
            }
        })
        .collect()
}

/// The demo's address of each listener, and where the test's gateway has it.
fn rewrite(text: &str, ports: &[(&str, String)]) -> String {
    ports.iter().fold(text.to_string(), |t, (from, to)| t.replace(from, to))
}

/// The real binary on the shipped demo config, its listeners on ephemeral ports; each of
/// the demo's addresses with the one the gateway got; the config's directory.
async fn demo() -> (Process, [(&'static str, String); 3], tempfile::TempDir) {
    // The shipped demo config, its listeners on ephemeral ports.
    let root = env!("CARGO_MANIFEST_DIR");
    let demo = std::fs::read_to_string(format!("{root}/config/portcullis.toml")).unwrap();
    let listeners = ["127.0.0.1:8443", "127.0.0.1:9901", "127.0.0.1:9902"];
    let ephemeral = listeners.iter().fold(
        demo.replace("\"config/tls/", &format!("\"{root}/config/tls/")),
        |t, a| t.replace(&format!("address = \"{a}\""), "address = \"127.0.0.1:0\""),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &ephemeral);
    let gw = Process::start(&path, &[]);
    let logs = gw
        .logs_when(|l| l.contains(r#""listener":"egress""#) && l.contains(r#""message":"listening""#))
        .await;
    let egress = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "listening" && v["listener"] == "egress")
        .and_then(|v| v["address"].as_str().map(str::to_string))
        .unwrap();
    let ports = [
        ("localhost:8443", format!("localhost:{}", gw.addr.port())),
        ("127.0.0.1:9901", gw.admin.unwrap().to_string()),
        ("127.0.0.1:9902", egress),
    ];
    // The demo's egress endpoint calls the demo's own inbound listener: point it at the
    // port this one got, and reload.
    let pointed = rewrite(&ephemeral, &ports[..1]);
    assert_ne!(pointed, ephemeral, "the demo endpoint points at the demo's listener");
    let next = dir.path().join("next.toml");
    std::fs::write(&next, &pointed).unwrap();
    std::fs::rename(&next, &path).unwrap();
    gw.signal("HUP");
    gw.logs_when(|l| l.contains("config reloaded")).await;
    (gw, ports, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_gets_the_statuses_it_documents() {
    let steps = walkthrough();
    assert!(steps.iter().filter(|s| s.status.is_some()).count() >= 10, "{steps:?}");
    let curl_ok = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !curl_ok {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_TOOLS").is_none(),
            "PORTCULLIS_REQUIRE_TOOLS is set but curl is missing"
        );
        crate::support::skipped("the README walkthrough needs curl");
        return;
    }

    let (gw, ports, _dir) = demo().await;

    // One script: the steps in order (a token the walkthrough gets is used further on),
    // curl recording each response's head, each step's exit status and output in files.
    let out = tempfile::tempdir().unwrap();
    let o = out.path().display();
    let secs = PATIENCE.as_secs();
    let mut script = format!(
        "set -o pipefail\n\
         curl() {{ echo >> \"$PC_OUT.calls\"; command curl -q --noproxy '*' --max-time {secs} -D \"$PC_OUT.head\" \"$@\"; }}\n"
    );
    for (i, s) in steps.iter().enumerate() {
        let command = rewrite(&s.command, &ports);
        for (demo, _) in &ports {
            let port = demo.rsplit(':').next().unwrap();
            assert!(!command.contains(&format!(":{port}")), "not rewritten: {command}");
        }
        match s.status {
            None => script.push_str(&format!("{command}\n")),
            Some(_) => script.push_str(&format!(
                "PC_OUT={o}/{i}\n{{\n{command}\n}} > {o}/{i}.out 2>&1\necho $? > {o}/{i}.rc\n"
            )),
        }
    }
    let run = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("CURL_HOME")
        .env("HOME", out.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    let mut wrong = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let Some(documented) = s.status else { continue };
        let read = |ext: &str| std::fs::read_to_string(out.path().join(format!("{i}.{ext}"))).unwrap_or_default();
        let calls = read("calls").lines().count();
        let status: Option<u16> = read("head")
            .lines()
            .rfind(|l| l.starts_with("HTTP/"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok());
        let rc = read("rc").trim().to_string();
        if calls != 1 || status != Some(documented) || rc != "0" {
            wrong.push(format!(
                "`{}`\n  documented {documented}, got {status:?}; exit {rc}; {calls} curl calls\n  output: {}",
                s.command,
                read("out").trim()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "README's walkthrough does not do what it says:\n{}\n\ngateway log:\n{}",
        wrong.join("\n"),
        gw.logs()
    );
}
