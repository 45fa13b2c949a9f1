//! The container image, checked without a Docker engine: the Dockerfile is parsed and
//! held against the workspace (what `cargo metadata` says it builds), the operator's
//! ports, and the image the chart and the CRD default to.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use support::{documents, helm, render_chart, repo_path};

/// One Dockerfile instruction: its keyword and its arguments, continuation lines joined.
#[derive(Debug, Clone, PartialEq)]
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

/// A build stage: the image it starts from, its name, its instructions.
#[derive(Debug)]
struct Stage {
    base: String,
    name: String,
    instructions: Vec<Instruction>,
}

const KNOWN: &[&str] = &[
    "FROM",
    "ARG",
    "ENV",
    "WORKDIR",
    "COPY",
    "RUN",
    "LABEL",
    "USER",
    "EXPOSE",
    "ENTRYPOINT",
    "CMD",
];

fn instructions(text: &str) -> Result<Vec<Instruction>, String> {
    let mut out = Vec::new();
    let mut pending: Option<Instruction> = None;
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if pending.is_none() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        let (body, continues) = match line.strip_suffix('\\') {
            Some(body) => (body.trim_end(), true),
            None => (line, false),
        };
        match pending.as_mut() {
            Some(instruction) => {
                if !body.starts_with('#') {
                    instruction.args.push(' ');
                    instruction.args.push_str(body);
                }
            }
            None => {
                let (keyword, args) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
                if !KNOWN.contains(&keyword) {
                    return Err(format!(
                        "line {}: unknown instruction {keyword}",
                        number + 1
                    ));
                }
                pending = Some(Instruction {
                    line: number + 1,
                    keyword: keyword.to_owned(),
                    args: args.trim().to_owned(),
                });
            }
        }
        if !continues {
            out.extend(pending.take());
        }
    }
    if let Some(instruction) = pending {
        return Err(format!(
            "line {}: {} ends in a continuation",
            instruction.line, instruction.keyword
        ));
    }
    Ok(out)
}

fn stages(instructions: Vec<Instruction>) -> Result<Vec<Stage>, String> {
    let mut stages: Vec<Stage> = Vec::new();
    for instruction in instructions {
        if instruction.keyword == "FROM" {
            let words: Vec<&str> = instruction.args.split_whitespace().collect();
            let [base, as_, name] = words[..] else {
                return Err(format!(
                    "line {}: FROM <image> AS <name> (every stage named)",
                    instruction.line
                ));
            };
            if !as_.eq_ignore_ascii_case("as") || stages.iter().any(|s| s.name == name) {
                return Err(format!("line {}: a second stage {name}", instruction.line));
            }
            stages.push(Stage {
                base: base.to_owned(),
                name: name.to_owned(),
                instructions: Vec::new(),
            });
        } else {
            let Some(stage) = stages.last_mut() else {
                return Err(format!(
                    "line {}: {} before any FROM",
                    instruction.line, instruction.keyword
                ));
            };
            stage.instructions.push(instruction);
        }
    }
    Ok(stages)
}

impl Stage {
    fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a Instruction> + 'a {
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
    }
}

/// `(package names, bin target names)` of the workspace, from `cargo metadata`.
fn workspace() -> (BTreeMap<String, BTreeSet<String>>, BTreeSet<String>) {
    let output = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1", "--locked"])
        .current_dir(repo_path(""))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success());
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let root = std::fs::canonicalize(repo_path("")).unwrap();
    let mut bins = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    for package in metadata["packages"].as_array().unwrap() {
        let manifest = std::path::Path::new(package["manifest_path"].as_str().unwrap());
        let dir = manifest.parent().unwrap().strip_prefix(&root).unwrap();
        dirs.insert(dir.display().to_string());
        let names = package["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        bins.insert(package["name"].as_str().unwrap().to_owned(), names);
    }
    (bins, dirs)
}

fn dockerfile() -> Vec<Stage> {
    let text = std::fs::read_to_string(repo_path("Dockerfile")).expect("a Dockerfile");
    instructions(&text)
        .and_then(stages)
        .unwrap_or_else(|e| panic!("Dockerfile: {e}"))
}

#[test]
fn the_dockerfile_parser_refuses_what_docker_would() {
    let parse = |text: &str| instructions(text).and_then(stages).map(|s| s.len());
    assert_eq!(
        parse("FROM a AS one\nRUN x \\\n  && y\nFROM b AS two\n"),
        Ok(2)
    );
    assert!(parse("FROM a\n").unwrap_err().contains("every stage named"));
    assert!(
        parse("FROM a AS x\nFROM b AS x\n")
            .unwrap_err()
            .contains("second stage")
    );
    assert!(
        parse("FORM a AS x\n")
            .unwrap_err()
            .contains("unknown instruction FORM")
    );
    assert!(parse("RUN x\n").unwrap_err().contains("before any FROM"));
    assert!(
        parse("FROM a AS x\nRUN y \\\n")
            .unwrap_err()
            .contains("continuation")
    );
}

#[test]
fn the_dockerfile_builds_the_workspace_binaries_into_a_non_root_image() {
    let stages = dockerfile();
    let (packages, member_dirs) = workspace();
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    assert!(stages.len() >= 2, "a multi-stage build: {names:?}");
    let (runtime, builders) = stages.split_last().unwrap();

    // Every stage a COPY --from names is an earlier one.
    for (index, stage) in stages.iter().enumerate() {
        for copy in stage.all("COPY") {
            if let Some(from) = copy.args.strip_prefix("--from=") {
                let from = from.split_whitespace().next().unwrap();
                assert!(
                    names[..index].contains(&from),
                    "line {}: COPY --from={from} names no earlier stage",
                    copy.line
                );
            }
        }
    }

    // The builder compiles packages of this workspace, from every member's sources,
    // and collects only binaries those packages have.
    let build = builders
        .iter()
        .find(|s| s.all("RUN").any(|r| r.args.contains("cargo build")))
        .expect("a stage runs cargo build");
    assert!(build.base.starts_with("rust:"), "{}", build.base);
    let run = build
        .all("RUN")
        .find(|r| r.args.contains("cargo build"))
        .unwrap();
    let cargo_build: Vec<&str> = run
        .args
        .split("&&")
        .find(|command| command.contains("cargo build"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert!(cargo_build.contains(&"--release") && cargo_build.contains(&"--locked"));
    let built: BTreeSet<&str> = cargo_build
        .windows(2)
        .filter(|w| w[0] == "-p")
        .map(|w| w[1])
        .collect();
    let built_bins: BTreeSet<String> = built
        .iter()
        .map(|p| {
            packages
                .get(*p)
                .unwrap_or_else(|| panic!("cargo build -p {p}: no such workspace package"))
        })
        .flat_map(|bins| bins.iter().cloned())
        .collect();
    let copied_sources: BTreeSet<String> = build
        .all("COPY")
        .filter(|c| !c.args.starts_with("--from"))
        .flat_map(|c| {
            c.args
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    for dir in member_dirs.iter().filter(|d| !d.is_empty()) {
        assert!(
            copied_sources.contains(dir),
            "the build stage does not copy workspace member {dir}/"
        );
    }
    assert!(copied_sources.contains("Cargo.lock"));
    let collected: BTreeSet<String> = run
        .args
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("target/release/"))
        .map(str::to_owned)
        .collect();
    assert!(
        collected.is_subset(&built_bins),
        "{collected:?} are not all among the binaries built, {built_bins:?}"
    );
    for needed in ["dcache-node", "dcache-operator", "dcache"] {
        assert!(collected.contains(needed), "the image lacks {needed}");
    }

    // The runtime stage: those binaries in /usr/local/bin, a non-root user, the
    // operator's ports, dcache-node as the entrypoint.
    let copy = runtime
        .all("COPY")
        .find(|c| c.args.starts_with(&format!("--from={}", build.name)))
        .expect("the runtime stage copies the binaries from the build stage");
    let copy_words: Vec<&str> = copy.args.split_whitespace().skip(1).collect();
    let (destination, sources) = copy_words.split_last().unwrap();
    assert_eq!(*destination, "/usr/local/bin/");
    let installed: BTreeSet<String> = sources
        .iter()
        .map(|s| s.rsplit('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(installed, collected);
    let user = runtime
        .all("USER")
        .last()
        .expect("a USER in the final stage");
    let uid = user.args.split(':').next().unwrap();
    assert!(
        !["root", "0"].contains(&uid),
        "the image runs as root: {}",
        user.args
    );
    let exposed: BTreeSet<i32> = runtime
        .all("EXPOSE")
        .flat_map(|e| e.args.split_whitespace().map(|p| p.parse::<i32>().unwrap()))
        .collect();
    use dcache_operator::resources::{API_PORT, RAFT_PORT, RESP_PORT};
    assert_eq!(exposed, BTreeSet::from([API_PORT, RAFT_PORT, RESP_PORT]));
    let entrypoint = runtime.all("ENTRYPOINT").last().expect("an ENTRYPOINT");
    let entrypoint: Vec<String> = serde_json::from_str(&entrypoint.args)
        .expect("ENTRYPOINT in exec form (there is no shell in the image)");
    assert_eq!(entrypoint, ["/usr/local/bin/dcache-node"]);

    // The build context keeps what the build copies, and leaves out the heavy rest.
    let ignored: BTreeSet<String> = std::fs::read_to_string(repo_path(".dockerignore"))
        .expect("a .dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for heavy in ["target", ".git", ".tools"] {
        assert!(ignored.contains(heavy), ".dockerignore lacks {heavy}");
    }
    for source in &copied_sources {
        assert!(!ignored.contains(source), ".dockerignore drops {source}");
    }
}

#[test]
fn make_image_tags_what_the_chart_and_the_crd_default_to() {
    let output = std::process::Command::new("make")
        .args(["--no-print-directory", "-s", "image-name"])
        .current_dir(repo_path(""))
        .output()
        .expect("make runs");
    assert!(output.status.success());
    let image = String::from_utf8(output.stdout).unwrap().trim().to_owned();

    let read = |path: &str| -> serde_yaml::Value {
        serde_yaml::from_str(&std::fs::read_to_string(repo_path(path)).unwrap()).unwrap()
    };
    let chart = read("charts/dcache-operator/Chart.yaml");
    let values = read("charts/dcache-operator/values.yaml");
    let app_version = chart["appVersion"].as_str().unwrap();
    assert_eq!(
        app_version,
        env!("CARGO_PKG_VERSION"),
        "the chart's appVersion is the workspace's version"
    );
    assert_eq!(values["image"]["tag"], "", "the tag follows appVersion");
    let chart_image = format!(
        "{}:{app_version}",
        values["image"]["repository"].as_str().unwrap()
    );
    assert_eq!(chart_image, image, "the chart's operator image");
    let spec: dcache_operator::crd::DistributedCacheSpec =
        serde_json::from_value(serde_json::json!({})).unwrap();
    assert_eq!(spec.image, image, "a DistributedCache's default image");

    // The operator runs from the same image by command, since its entrypoint is the node.
    let rendered = render_chart(&helm(), &[]);
    let deployment = documents(&rendered)
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let deployment: k8s_openapi::api::apps::v1::Deployment =
        serde_yaml::from_value(deployment).unwrap();
    let container = &deployment.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(container.image.as_deref(), Some(image.as_str()));
    assert_eq!(
        container.command.as_deref(),
        Some(&["/usr/local/bin/dcache-operator".to_owned()][..])
    );
}
