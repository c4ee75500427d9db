//! Callback URLs tried where a mistake cannot reach anything: `rose serve`
//! runs in a network namespace of its own, with loopback and a veth pair whose
//! two ends both stay inside (its resolver sits behind it and never answers),
//! and the client (`curl`) runs in it too. A refused address that were
//! wrongly accepted would fail there, unsent.
//!
//! Needs root for `ip netns`; elsewhere the test prints `skipped:` (under CI
//! it fails instead).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rose_tests::process::Proc;
use serde_json::Value;

const ROSE: &str = env!("CARGO_BIN_EXE_rose");
const TOKEN: &str = "sealed-namespace-admin-token-0123456789";
/// The Standard Webhooks reference secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The namespace's resolver: an address on the dummy device, so queries vanish.
const SILENT_RESOLVER: &str = "10.255.255.53";

fn run(program: &str, args: &[&str]) -> Result<Output, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace, deleted (with its `/etc/netns` files) when dropped.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create() -> Result<Self, String> {
        let id = ulid::Ulid::generate().to_string().to_lowercase();
        let name = format!("rose-{}", &id[id.len() - 10..]);
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        // A veth pair with both ends inside: what is sent to the resolver
        // leaves on sink0 for a neighbour that is not there, and vanishes.
        ns.ip(&[
            "link", "add", "sink0", "type", "veth", "peer", "name", "sink1",
        ])?;
        ns.ip(&["addr", "add", "10.255.255.1/24", "dev", "sink0"])?;
        ns.ip(&["link", "set", "sink0", "up"])?;
        ns.ip(&["link", "set", "sink1", "up"])?;
        ns.ip(&[
            "neigh",
            "add",
            SILENT_RESOLVER,
            "lladdr",
            "02:00:00:00:00:53",
            "dev",
            "sink0",
            "nud",
            "permanent",
        ])?;
        // `ip netns exec` mounts these over /etc inside the namespace.
        let etc = ns.etc();
        std::fs::create_dir_all(&etc).map_err(|e| format!("{}: {e}", etc.display()))?;
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {SILENT_RESOLVER}\noptions timeout:30 attempts:1\n"),
        )
        .map_err(|e| format!("resolv.conf: {e}"))?;
        Ok(ns)
    }

    fn etc(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) -> Result<Output, String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `program` run inside the namespace.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// `curl` inside the namespace: the status (0 when no answer came) and body.
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let out = self
            .command("curl")
            .args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "delete", &self.name]);
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

/// Why the test cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    let root = run("id", &["-u"]).is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return Some("ip netns needs root".to_owned());
    }
    if run("curl", &["--version"]).is_err() {
        return Some("curl is not installed".to_owned());
    }
    None
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()))
}

#[test]
fn callbacks_to_special_addresses_are_refused_in_a_sealed_namespace() {
    let made = match unavailable() {
        Some(why) => Err(why),
        None => Namespace::create(),
    };
    let ns = match made {
        Ok(ns) => ns,
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "the sealed-namespace test cannot run under CI: {why}"
            );
            println!("skipped: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("dir");
    let _server = Proc(
        ns.command(ROSE)
            .args(["serve", "--port", "8080"])
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("GROQ_API_KEY")
            .env_remove("QDRANT_URL")
            .env("ROSE_DATA_DIR", dir.path())
            .env("ROSE_WEBHOOK_SECRET", SECRET)
            .env("ROSE_ADMIN_TOKEN", TOKEN)
            .env("ROSE_RATE_LIMIT_VOICE_PER_MIN", "0")
            .env("ROSE_RATE_LIMIT_PER_MIN", "0")
            .env("EMBEDDING_MODEL_DIR", rose_tests::model_dir())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("serve.log")).expect("log file"),
            ))
            .spawn()
            .expect("start rose serve in the namespace"),
    );
    let base = "http://127.0.0.1:8080";
    let started = Instant::now();
    while ns.curl(&[&format!("{base}/api/health")]).0 == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "rose serve did not start: {}",
            std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = ns.curl(&["-X", "POST", &format!("{base}/api/session/start")]);
    assert_eq!(status, 201, "{body}");
    let session = json(&body)["session_id"]
        .as_str()
        .expect("session id")
        .to_owned();
    let submit = |callback: &str| {
        ns.curl(&[
            "-F",
            &format!("session_id={session}"),
            "-F",
            "text=It has been a year today.",
            "-F",
            &format!("callback_url={callback}"),
            &format!("{base}/api/voice/process"),
        ])
    };

    for url in [
        "http://[::127.0.0.1]:8080/hook",
        "http://[64:ff9b::7f00:1]/hook",
        "http://[2002:7f00:1::]/hook",
        "http://198.18.0.1/hook",
        "http://[::ffff:127.0.0.1]:8080/hook",
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "http://[64:ff9b:1::a00:1]/hook",
        "http://[2001::1]/hook",
        "http://192.0.0.9/hook",
        "http://240.0.0.1/hook",
        "http://[fec0::1]/hook",
    ] {
        let (status, body) = submit(url);
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(
            json(&body)["error"]["code"],
            "callback_url_forbidden",
            "{url}: {body}"
        );
    }

    // A host whose lookup never ends is refused at the lookup's bound, with a reason.
    let asked = Instant::now();
    let (status, body) = submit("http://hook.sealed.example/hook");
    assert_eq!(status, 400, "answered within curl's 20 s: {body}");
    let error = &json(&body)["error"];
    assert_eq!(error["code"], "invalid_callback_url", "{body}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("did not resolve within")),
        "{body}"
    );
    println!(
        "the unanswered lookup was refused after {:?}",
        asked.elapsed()
    );

    let (status, body) = ns.curl(&[
        "-H",
        &format!("authorization: Bearer {TOKEN}"),
        &format!("{base}/api/admin/jobs"),
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body)["jobs"],
        Value::Array(Vec::new()),
        "nothing stored"
    );
}
