//! The image, as the Dockerfile's last stage makes it.

use crate::repo;

#[derive(Debug)]
pub struct Image {
    /// Where the stage puts the `reviews` binary.
    pub binary: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub user: (u32, u32),
    pub exposed: Vec<u16>,
    pub workdir: String,
}

/// The Dockerfile's instructions, continuation lines joined and comments dropped.
pub fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (op, rest) = current
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((op.to_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

/// An exec-form (`["a", "b"]`) argument list; the shell form would put `/bin/sh` in between.
pub fn exec_form(op: &str, value: &str) -> Vec<String> {
    serde_json::from_str(value)
        .unwrap_or_else(|_| panic!("{op} must be in exec form (a JSON array): {value}"))
}

pub fn dockerfile_image() -> Image {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let all = instructions(&text);
    let last_from = all
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .expect("no FROM");
    let mut image = Image {
        binary: String::new(),
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        env: Vec::new(),
        user: (0, 0),
        exposed: Vec::new(),
        workdir: "/".into(),
    };
    for (op, value) in &all[last_from + 1..] {
        match op.as_str() {
            "COPY" => {
                let parts: Vec<&str> = value
                    .split_whitespace()
                    .filter(|p| !p.starts_with("--"))
                    .collect();
                if parts[0].ends_with("/reviews") {
                    image.binary = parts[1].to_string();
                }
            }
            "USER" => {
                let (u, g) = value.split_once(':').unwrap_or((value, value));
                image.user = (u.parse().expect("USER must be numeric"), g.parse().unwrap());
            }
            "EXPOSE" => image.exposed.extend(
                value
                    .split_whitespace()
                    .map(|p| p.trim_end_matches("/tcp").parse::<u16>().unwrap()),
            ),
            "ENV" => {
                for pair in value.split_whitespace() {
                    let (k, v) = pair.split_once('=').expect("ENV key=value");
                    set(&mut image.env, k, v.trim_matches('"'));
                }
            }
            "WORKDIR" => image.workdir = value.clone(),
            "ENTRYPOINT" => image.entrypoint = exec_form(op, value),
            "CMD" => image.cmd = exec_form(op, value),
            _ => {}
        }
    }
    assert!(
        !image.binary.is_empty(),
        "the runtime stage copies no reviews binary"
    );
    image
}

pub fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
}
