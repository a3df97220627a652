//! The admin API as an operator drives it: JSON requests on the broker's Unix socket ([`Admin`]) and
//! the real `brokerctl` binary ([`TestBroker::brokerctl`], built on first use in this target
//! directory, since Cargo only builds another package's binaries for that package's own tests).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::{TestBroker, Timely};

/// A client of one broker's admin socket; every request is a new connection, as with brokerctl.
pub struct Admin {
    socket: PathBuf,
}

impl TestBroker {
    /// The admin API of this broker.
    pub fn admin(&self) -> Admin {
        Admin {
            socket: self.config.admin_socket(),
        }
    }

    /// Runs `brokerctl --socket DATA_DIR/admin.sock ARGS...` and returns what it printed.
    pub async fn brokerctl(&self, args: &[&str]) -> CtlOutput {
        self.brokerctl_with_input(args, b"").await
    }

    /// [`Self::brokerctl`] with `input` on its standard input.
    pub async fn brokerctl_with_input(&self, args: &[&str], input: &[u8]) -> CtlOutput {
        use tokio::io::AsyncWriteExt as _;
        let exe = brokerctl_binary().await;
        let socket = self.config.admin_socket();
        let mut child = Command::new(exe)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("brokerctl starts");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input).await;
        }
        let output = child
            .wait_with_output()
            .timely()
            .await
            .expect("brokerctl runs");
        CtlOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// What a brokerctl run printed, and whether it exited with status 0.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    /// Asserts exit status 0 and returns stdout.
    pub fn ok(self) -> String {
        assert!(self.success, "brokerctl failed: {self:?}");
        self.stdout
    }
}

impl Admin {
    /// Sends one request line; `Ok(result)` for `{"ok":true,...}`, `Err(error)` for `{"ok":false,...}`.
    pub async fn call(&self, request: Value) -> Result<Value, String> {
        self.call_within(request, crate::TIMEOUT).await
    }

    /// [`Self::call`] for a request that may take up to `limit` (a cluster's membership change).
    pub async fn call_within(&self, request: Value, limit: Duration) -> Result<Value, String> {
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket)
                .await
                .expect("admin socket accepts");
            let mut line = serde_json::to_vec(&request).expect("request encodes");
            line.push(b'\n');
            stream.write_all(&line).await.expect("request written");
            let mut answer = String::new();
            BufReader::new(stream)
                .read_line(&mut answer)
                .await
                .expect("answer read");
            answer
        };
        let answer = tokio::time::timeout(limit, exchange)
            .await
            .unwrap_or_else(|_| panic!("the broker did not answer within {limit:?}"));
        let answer: Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("the admin answer {answer:?} is not JSON: {e}"));
        match answer["ok"] {
            Value::Bool(true) => Ok(answer["result"].clone()),
            Value::Bool(false) => Err(answer["error"]
                .as_str()
                .unwrap_or_else(|| panic!("an error without text: {answer}"))
                .to_string()),
            _ => panic!("an admin answer without \"ok\": {answer}"),
        }
    }

    /// Like [`Self::call`], panicking if the broker refuses the request.
    pub async fn ok(&self, request: Value) -> Value {
        let what = request.to_string();
        self.call(request)
            .await
            .unwrap_or_else(|e| panic!("admin request {what} refused: {e}"))
    }

    /// add_user `name`, then set_permissions on `vhost`.
    pub async fn add_user_with_permissions(
        &self,
        name: &str,
        vhost: &str,
        (configure, write, read): (&str, &str, &str),
    ) {
        self.ok(serde_json::json!({"command": "add_user", "name": name}))
            .await;
        self.set_permissions(vhost, name, (configure, write, read))
            .await;
    }

    pub async fn set_permissions(&self, vhost: &str, user: &str, (c, w, r): (&str, &str, &str)) {
        self.ok(
            serde_json::json!({"command": "set_permissions", "vhost": vhost, "user": user,
                                   "configure": c, "write": w, "read": r}),
        )
        .await;
    }
}

/// The longest a first build of brokerctl may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// `brokerctl` next to this test executable (TARGET/PROFILE/deps/e2e-HASH), built once per run.
/// The brokerctl binary these tests run (built on first use).
pub async fn brokerctl_path() -> PathBuf {
    brokerctl_binary().await
}

async fn brokerctl_binary() -> PathBuf {
    static BINARY: OnceCell<PathBuf> = OnceCell::const_new();
    BINARY
        .get_or_init(|| async {
            let exe = std::env::current_exe().expect("test executable path");
            let profile_dir = exe
                .parent()
                .and_then(|deps| deps.parent())
                .expect("TARGET/PROFILE/deps");
            let target = profile_dir.parent().expect("TARGET");
            let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") => "dev",
                Some(other) => other,
                None => panic!("unexpected target layout {}", exe.display()),
            };
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let build = Command::new(cargo)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .args(["build", "--quiet", "-p", "brokerctl", "--bin", "brokerctl"])
                .arg("--profile")
                .arg(profile)
                .arg("--target-dir")
                .arg(target)
                .kill_on_drop(true)
                .output();
            let output = tokio::time::timeout(BUILD_TIMEOUT, build)
                .await
                .unwrap_or_else(|_| panic!("building brokerctl took over {BUILD_TIMEOUT:?}"))
                .expect("cargo runs");
            assert!(
                output.status.success(),
                "cargo build -p brokerctl failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            profile_dir.join("brokerctl")
        })
        .await
        .clone()
}
