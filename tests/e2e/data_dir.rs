//! What the broker trusts on disk is its own (PROBE F5, F11): one broker per data directory (a second
//! one refuses to start and leaves the first one's admin socket alone), and the CA bundle, the CRLs
//! and the data directory are refused when group or others may write them or another user owns them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use warren_broker::config::Config;
use warren_broker::pki::DevPki;
use warren_broker::Server;
use warren_tests::certs::dev_ca;
use warren_tests::TestBroker;

fn start_error(config: &Config) -> String {
    match Server::new(Arc::new(config.clone())) {
        Ok(_) => panic!("the broker started"),
        Err(e) => format!("{e:#}"),
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test]
async fn a_second_broker_on_the_same_data_directory_refuses_to_start() {
    let broker = TestBroker::start().await;
    let error = start_error(&broker.config);
    assert!(
        error.contains("another Warren broker is using the data directory"),
        "{error}"
    );
    // The first broker's admin socket is live: it is not replaced.
    let error = warren_broker::admin::bind(&broker.config.admin_socket())
        .expect_err("binding over a live admin socket");
    assert!(
        error.to_string().contains("in use by a running broker"),
        "{error}"
    );
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("still-served").await;
    client.close().await;
    // Once the first one is gone, the directory is free again.
    let broker = broker.restart().await;
    let client = broker.connect().await;
    client.close().await;
}

#[tokio::test]
async fn a_closed_broker_releases_its_data_directory_while_a_task_still_holds_it() {
    let dir = tempfile::tempdir().expect("temporary directory");
    DevPki::ensure(&dir.path().join("tls")).expect("dev PKI");
    let config = Arc::new(Config::dev(
        dir.path(),
        "127.0.0.1:0".parse().expect("address"),
    ));
    let first = Server::new(config.clone()).expect("the first broker starts");
    // A task that outlives the broker a moment keeps its state alive.
    let lingering = first.broker.clone();
    drop(first);
    assert!(start_error(&config).contains("another Warren broker is using the data directory"));
    lingering.close();
    let second = Server::new(config).expect("the next broker starts once the first has closed");
    // The closed broker's log takes no more writes: they cannot reach the next broker's files.
    let error = lingering
        .durability
        .flush()
        .expect_err("a closed log is flushed");
    assert!(
        error.to_string().contains("the store has stopped"),
        "{error}"
    );
    second
        .broker
        .durability
        .flush()
        .expect("the next broker's log works");
}

#[tokio::test]
async fn trusted_files_and_the_data_directory_must_not_be_writable_by_others() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (pki, _) = DevPki::ensure(&dir.path().join("tls")).expect("dev PKI");
    let mut config = Config::dev(dir.path(), "127.0.0.1:0".parse().expect("address"));
    let ca = pki.ca_cert.display().to_string();

    chmod(&pki.ca_cert, 0o666);
    let error = start_error(&config);
    assert!(
        error.contains(&ca) && error.contains("chmod go-w"),
        "{error}"
    );
    chmod(&pki.ca_cert, 0o644);
    rustix::fs::chown(&pki.ca_cert, Some(rustix::fs::Uid::from_raw(4242)), None)
        .expect("chown (the tests run as root)");
    let error = start_error(&config);
    assert!(error.contains(&ca) && error.contains("uid 4242"), "{error}");
    rustix::fs::chown(&pki.ca_cert, Some(rustix::process::geteuid()), None).expect("chown back");

    let crl = dir.path().join("crl.pem");
    std::fs::write(
        &crl,
        dev_ca(&config)
            .revocation_list(1, &[], warren_broker::pki::Validity::days(30))
            .expect("CRL"),
    )
    .expect("write CRL");
    chmod(&crl, 0o646);
    config.tls.crls = vec![crl.clone()];
    let error = start_error(&config);
    assert!(error.contains(&crl.display().to_string()), "{error}");
    chmod(&crl, 0o644);

    chmod(dir.path(), 0o777);
    let error = start_error(&config);
    assert!(
        error.contains(&dir.path().display().to_string()) && error.contains("0777"),
        "{error}"
    );
    chmod(dir.path(), 0o700);
    drop(Server::new(Arc::new(config)).expect("all fixed: it starts"));
}
