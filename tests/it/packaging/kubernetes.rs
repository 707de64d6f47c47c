//! The Kubernetes sidecar example: the manifests parse, reference each
//! other consistently (Secret, ConfigMap, mount, `--config`), carry the
//! probes, annotations and resources docs/deployment.md promises, and the
//! ConfigMap's TOML passes `pgsidecar check` with the pod's environment.
//! Schemas are checked by `packaging/check-kubernetes.sh`.

use std::collections::BTreeMap;

use yaml_rust2::{Yaml, YamlLoader};

use super::{check_with, read, text};

fn manifest(name: &str) -> Yaml {
    let docs = YamlLoader::load_from_str(&read(&format!("packaging/kubernetes/{name}")))
        .unwrap_or_else(|e| panic!("{name} is not YAML: {e}"));
    assert_eq!(docs.len(), 1, "{name}: one document");
    docs.into_iter().next().unwrap()
}

fn str_of<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {y:?}"))
}

#[test]
fn kubernetes_sidecar_example_is_consistent_and_its_config_checks() {
    let secret = manifest("secret.yaml");
    let config_map = manifest("configmap.yaml");
    let deployment = manifest("deployment.yaml");
    assert_eq!(str_of(&secret["kind"], "kind"), "Secret");
    assert_eq!(str_of(&config_map["kind"], "kind"), "ConfigMap");
    assert_eq!(str_of(&deployment["kind"], "kind"), "Deployment");
    let kustomization = read("packaging/kubernetes/kustomization.yaml");
    for file in [
        "secret.yaml",
        "configmap.yaml",
        "deployment.yaml",
        "hpa.yaml",
    ] {
        assert!(kustomization.contains(&format!("- {file}")), "{file}");
    }

    let pod = &deployment["spec"]["template"];
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(
        str_of(&annotations["prometheus.io/scrape"], "scrape"),
        "true"
    );
    assert_eq!(str_of(&annotations["prometheus.io/port"], "port"), "9930");
    assert_eq!(
        str_of(&annotations["prometheus.io/path"], "path"),
        "/metrics"
    );

    let spec = &pod["spec"];
    let all_containers = spec["initContainers"]
        .as_vec()
        .into_iter()
        .chain(spec["containers"].as_vec())
        .flatten();
    let sidecar = all_containers
        .clone()
        .find(|c| c["name"].as_str() == Some("pgsidecar"))
        .expect("a pgsidecar container");
    let app = all_containers
        .clone()
        .find(|c| c["name"].as_str() == Some("app"))
        .expect("an app container");
    assert_eq!(
        str_of(&sidecar["readinessProbe"]["httpGet"]["path"], "readiness"),
        "/readyz"
    );
    assert_eq!(
        str_of(&sidecar["livenessProbe"]["httpGet"]["path"], "liveness"),
        "/healthz"
    );
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !sidecar["resources"][kind][resource].is_badvalue(),
                "{kind}.{resource}"
            );
        }
    }
    assert_eq!(
        sidecar["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );

    // The sidecar's environment, secrets resolved from secret.yaml.
    let secret_name = str_of(&secret["metadata"]["name"], "secret name");
    let mut env = BTreeMap::new();
    for var in sidecar["env"].as_vec().expect("sidecar env") {
        let name = str_of(&var["name"], "env name").to_string();
        let value = if let Some(v) = var["value"].as_str() {
            v.to_string()
        } else {
            let reference = &var["valueFrom"]["secretKeyRef"];
            assert_eq!(
                str_of(&reference["name"], "secret ref"),
                secret_name,
                "{name}"
            );
            let key = str_of(&reference["key"], "secret key");
            str_of(&secret["stringData"][key], "secret value").to_string()
        };
        env.insert(name, value);
    }

    // The ConfigMap is mounted where --config points.
    let args: Vec<&str> = sidecar["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let mount = str_of(&sidecar["volumeMounts"][0]["mountPath"], "mountPath");
    let config_map_name = str_of(&config_map["metadata"]["name"], "configmap name");
    assert_eq!(
        str_of(&spec["volumes"][0]["configMap"]["name"], "volume"),
        config_map_name
    );
    let file_name = config_path
        .strip_prefix(&format!("{mount}/"))
        .expect("config in the mount");
    let toml_text = str_of(&config_map["data"][file_name], "the ConfigMap's TOML");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file_name);
    std::fs::write(&path, toml_text).unwrap();
    let out = check_with(&path, &env);
    assert!(
        out.status.success(),
        "the ConfigMap's config with the pod's env: {out:?}"
    );
    let effective: toml::Table = text(&out.stdout).parse().unwrap();

    // The app reaches the proxy on loopback, as the same role.
    let app_env = |name: &str| {
        app["env"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("app env {name}"))
            .clone()
    };
    let listen = effective["proxy"]["listen"].as_str().unwrap();
    let app_target = format!(
        "{}:{}",
        str_of(&app_env("PGHOST")["value"], "PGHOST"),
        str_of(&app_env("PGPORT")["value"], "PGPORT")
    );
    assert_eq!(listen, app_target);
    assert_eq!(
        effective["users"][0]["name"].as_str(),
        app_env("PGUSER")["value"].as_str()
    );
    assert_eq!(effective["http"]["listen"].as_str(), Some("0.0.0.0:9930"));

    // The pods form a fleet sharing one budget, scaled by the HPA: no
    // static count of sidecars anywhere.
    assert!(
        effective["fleet"]["name"].as_str().is_some(),
        "the ConfigMap's config joins a fleet"
    );
    assert!(
        !toml_text.contains("sidecars"),
        "no static sidecars count in the ConfigMap"
    );
    assert!(
        deployment["spec"]["replicas"].is_badvalue(),
        "the HPA, not the Deployment, sets the number of pods"
    );
    let hpa = manifest("hpa.yaml");
    assert_eq!(str_of(&hpa["kind"], "kind"), "HorizontalPodAutoscaler");
    assert_eq!(str_of(&hpa["apiVersion"], "apiVersion"), "autoscaling/v2");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(str_of(&target["kind"], "target kind"), "Deployment");
    assert_eq!(
        str_of(&target["name"], "target name"),
        str_of(&deployment["metadata"]["name"], "deployment name")
    );
    let (min, max) = (
        hpa["spec"]["minReplicas"].as_i64().unwrap(),
        hpa["spec"]["maxReplicas"].as_i64().unwrap(),
    );
    assert!(1 <= min && min < max, "{min}..{max}");
}
