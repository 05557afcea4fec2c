//! docker-compose.yml is checked without a Docker engine: its services, health
//! checks, loopback-only ports and credentials match scripts/services.sh (which the
//! tests use), its volumes are declared, and the example config written for it is a
//! valid sluice config.

use std::path::Path;

use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    serde_yaml::from_str(&text).expect("docker-compose.yml is YAML")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
}

/// `environment` as a map, whether written as a map or as `KEY=value` items.
fn env(service: &Value, key: &str) -> Option<String> {
    match &service["environment"] {
        Value::Mapping(map) => map.get(key).map(|v| match v {
            Value::String(s) => s.clone(),
            other => serde_yaml::to_string(other).unwrap().trim().to_string(),
        }),
        Value::Sequence(items) => items.iter().find_map(|i| {
            i.as_str()?
                .strip_prefix(&format!("{key}="))
                .map(String::from)
        }),
        _ => None,
    }
}

fn ports(service: &Value) -> Vec<String> {
    service["ports"]
        .as_sequence()
        .map(|s| {
            s.iter()
                .map(|p| p.as_str().expect("ports as strings").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A value from scripts/services.sh: a `NAME=value` line, or part of a URL in its
/// header.
fn services_sh() -> String {
    std::fs::read_to_string(root().join("scripts/services.sh")).unwrap()
}

fn sh_var(script: &str, name: &str) -> String {
    script
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("services.sh sets no {name}"))
        .trim_matches('"')
        .to_string()
}

#[test]
fn services_have_health_checks_and_loopback_ports() {
    let compose = compose();
    let script = services_sh();
    // Long-running services: a health check each, ports on 127.0.0.1 only, the
    // host port the local services use.
    for (name, host_port) in [
        ("minio", 9000),
        ("clickhouse", 8123),
        ("postgres", 5432),
        ("mysql", 3306),
        ("mongo", 27017),
    ] {
        let s = service(&compose, name);
        let test = &s["healthcheck"]["test"];
        assert!(
            test.as_sequence().is_some_and(|t| !t.is_empty()) || test.as_str().is_some(),
            "service {name} has no healthcheck test"
        );
        let ports = ports(s);
        assert!(!ports.is_empty(), "service {name} publishes no port");
        for p in &ports {
            assert!(
                p.starts_with("127.0.0.1:"),
                "service {name} publishes {p} beyond the loopback interface"
            );
        }
        assert!(
            ports
                .iter()
                .any(|p| p.starts_with(&format!("127.0.0.1:{host_port}:"))),
            "service {name} does not publish 127.0.0.1:{host_port} ({ports:?})"
        );
        assert!(
            script.contains(&format!("127.0.0.1:{host_port}")),
            "services.sh does not use port {host_port}"
        );
        assert!(
            s["image"].as_str().is_some_and(|i| i.contains(':')),
            "service {name} has no pinned image tag"
        );
    }
    // The bucket job: runs once MinIO is healthy and creates the lake bucket.
    let bucket = service(&compose, "minio-bucket");
    assert_eq!(
        bucket["depends_on"]["minio"]["condition"].as_str(),
        Some("service_healthy")
    );
    let entry = serde_yaml::to_string(&bucket["entrypoint"]).unwrap();
    let name = sh_var(&script, "S3_BUCKET");
    assert!(
        entry.contains(&format!("local/{name}")),
        "minio-bucket does not create bucket {name}: {entry}"
    );
    // MongoDB is a one-node replica set, as the local server advertises;
    // PostgreSQL has logical WAL, as the local cluster.
    let mongo = serde_yaml::to_string(&service(&compose, "mongo")["command"]).unwrap();
    assert!(mongo.contains("--replSet"), "{mongo}");
    assert!(script.contains("replica set \"secantus\"") && mongo.contains("secantus"));
    let pg = serde_yaml::to_string(&service(&compose, "postgres")["command"]).unwrap();
    assert!(pg.contains("wal_level=logical"), "{pg}");
}

#[test]
fn credentials_match_the_local_services() {
    let compose = compose();
    let script = services_sh();
    let minio = service(&compose, "minio");
    assert_eq!(
        env(minio, "MINIO_ROOT_USER").unwrap(),
        sh_var(&script, "S3_ACCESS")
    );
    assert_eq!(
        env(minio, "MINIO_ROOT_PASSWORD").unwrap(),
        sh_var(&script, "S3_SECRET")
    );
    let entry = serde_yaml::to_string(&service(&compose, "minio-bucket")["entrypoint"]).unwrap();
    assert!(entry.contains(&format!(
        "{} {}",
        sh_var(&script, "S3_ACCESS"),
        sh_var(&script, "S3_SECRET")
    )));
    // postgres://sluice:sluice@127.0.0.1:5432/sluice and the MySQL equivalent.
    let pg = service(&compose, "postgres");
    let pg_url = format!(
        "postgres://{}:{}@127.0.0.1:5432/{}",
        env(pg, "POSTGRES_USER").unwrap(),
        env(pg, "POSTGRES_PASSWORD").unwrap(),
        env(pg, "POSTGRES_DB").unwrap()
    );
    assert!(
        script.contains(&pg_url),
        "services.sh does not use {pg_url}"
    );
    let my = service(&compose, "mysql");
    let my_url = format!(
        "mysql://{}:{}@127.0.0.1:3306/{}",
        env(my, "MYSQL_USER").unwrap(),
        env(my, "MYSQL_PASSWORD").unwrap(),
        env(my, "MYSQL_DATABASE").unwrap()
    );
    assert!(
        script.contains(&my_url),
        "services.sh does not use {my_url}"
    );
    let ch = service(&compose, "clickhouse");
    assert_eq!(env(ch, "CLICKHOUSE_USER").as_deref(), Some("default"));
    assert_eq!(env(ch, "CLICKHOUSE_PASSWORD").as_deref(), Some(""));
    assert!(script.contains("user default, empty password"));
}

#[test]
fn named_volumes_are_declared() {
    let compose = compose();
    let declared = compose["volumes"].as_mapping().expect("top-level volumes");
    let services = compose["services"].as_mapping().unwrap();
    let mut used = 0;
    for (name, s) in services {
        for volume in s["volumes"].as_sequence().into_iter().flatten() {
            let spec = volume.as_str().expect("short volume syntax");
            let source = spec.split(':').next().unwrap();
            if source.starts_with('.') || source.starts_with('/') {
                assert!(
                    root().join(source).exists(),
                    "{name:?} mounts {source}, which is not in the repository"
                );
            } else {
                used += 1;
                assert!(
                    declared.contains_key(source),
                    "{name:?} uses volume {source}, not declared under volumes:"
                );
            }
        }
    }
    assert!(used >= 5, "each data service keeps its data in a volume");
}

#[test]
fn example_config_for_compose_is_valid() {
    let text = std::fs::read_to_string(root().join("examples/docker-compose.toml")).unwrap();
    let env = |name: &str| match name {
        "EWALLET_PG_PASSWORD" => Some("sluice".to_string()),
        "CLICKHOUSE_PASSWORD" => Some(String::new()),
        _ => None,
    };
    let config = sluice::Config::from_toml(&text, &env).expect("examples/docker-compose.toml");
    assert_eq!(config.lake.url, "s3://lake/ewallet");
    let ch = config.clickhouse.expect("[clickhouse]");
    assert_eq!(ch.url, "http://127.0.0.1:8123");
    // ClickHouse reaches MinIO by its compose service name.
    assert_eq!(ch.s3_endpoint.as_deref(), Some("http://minio:9000"));
    assert!(config.sources["ewallet"].url.contains("127.0.0.1:5432"));
    assert!(!config.tables.is_empty());
}
