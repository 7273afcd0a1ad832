//! `--model OWNER/NAME[@REV]`: a checkpoint fetched from a Hugging Face Hub lookalike (a local
//! HTTP server answering the `/{repo}/resolve/{revision}/{file}` URLs as the Hub does) into the
//! standard cache layout, with a connection cut mid-file, a download resumed from an earlier
//! run's part file, a corrupt file caught by its SHA-256, a token, and offline mode.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use sha2::Digest;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_test_token";

struct File {
    bytes: Vec<u8>,
    /// What the Hub states: the SHA-256 for LFS files (shards), a git hash for the others.
    etag: String,
}

#[derive(Default)]
struct Hub {
    files: HashMap<String, File>,
    /// (file, Range header) of every request.
    log: Vec<(String, String)>,
    /// Files whose next full download stops halfway (the connection closes).
    cut_once: Vec<String>,
    /// Serve this file with one byte changed (its etag still the true SHA-256).
    corrupt: Option<String>,
}

fn start_hub(hub: Arc<Mutex<Hub>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let hub = hub.clone();
            std::thread::spawn(move || answer(conn, &hub));
        }
    });
    format!("http://{addr}")
}

/// One request on a connection, then close.
fn answer(mut conn: TcpStream, hub: &Mutex<Hub>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let reply = |conn: &mut TcpStream, status: &str, extra: &str, body: &[u8], claim: usize| {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {claim}\r\nConnection: close\r\n{extra}\r\n"
        );
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(body);
        let _ = conn.flush();
    };
    if headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}")) {
        reply(&mut conn, "401 Unauthorized", "", b"", 0);
        return;
    }
    let prefix = format!("/test-org/tiny/resolve/{COMMIT}/");
    let prefix_main = "/test-org/tiny/resolve/main/";
    let Some(name) = path
        .strip_prefix(&prefix)
        .or_else(|| path.strip_prefix(prefix_main))
    else {
        reply(&mut conn, "404 Not Found", "", b"", 0);
        return;
    };
    let range = headers.get("range").cloned().unwrap_or_default();
    let mut hub = hub.lock().unwrap();
    hub.log.push((name.to_string(), range.clone()));
    let Some(file) = hub.files.get(name) else {
        reply(
            &mut conn,
            "404 Not Found",
            "X-Error-Code: EntryNotFound\r\n",
            b"",
            0,
        );
        return;
    };
    let mut bytes = file.bytes.clone();
    if hub.corrupt.as_deref() == Some(name) {
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
    }
    let size = bytes.len();
    let meta = format!(
        "X-Repo-Commit: {COMMIT}\r\nETag: \"{}\"\r\nAccept-Ranges: bytes\r\n",
        file.etag
    );
    let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
        Some((a, b)) => (
            a.parse::<usize>().unwrap_or(0),
            b.parse::<usize>().map_or(size - 1, |e| e.min(size - 1)),
        ),
        None => (0, size - 1),
    };
    let body = &bytes[start..=end];
    let is_metadata = range == "bytes=0-0";
    let cut = !is_metadata && hub.cut_once.iter().any(|c| c == name);
    if cut {
        hub.cut_once.retain(|c| c != name);
    }
    drop(hub);
    let extra = format!("{meta}Content-Range: bytes {start}-{end}/{size}\r\n");
    if cut {
        // Claim the whole rest, send half of it, hang up.
        reply(
            &mut conn,
            "206 Partial Content",
            &extra,
            &body[..body.len() / 2],
            body.len(),
        );
    } else {
        reply(&mut conn, "206 Partial Content", &extra, body, body.len());
    }
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gpt-oss-wgpu"));
    c.args(args)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HOME");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn have_gpu() -> bool {
    run(&["devices"], &[]).status.success()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sha256(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn models_come_from_the_hub_into_the_shared_cache() {
    if !have_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let synth = run(
        &[
            "synth",
            "--preset",
            "tiny",
            "--seed",
            "2",
            "--out",
            src.to_str().unwrap(),
        ],
        &[],
    );
    assert!(synth.status.success(), "{}", text(&synth));
    let mut hub = Hub::default();
    let mut shard = String::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let bytes = std::fs::read(&p).unwrap();
        let etag = if name.ends_with(".safetensors") {
            shard = name.clone();
            sha256(&bytes)
        } else {
            sha256(&bytes)[..40].to_string()
        };
        hub.files.insert(name, File { bytes, etag });
    }
    // The shard's first download breaks off halfway: it must be resumed, not restarted.
    hub.cut_once.push(shard.clone());
    let hub = Arc::new(Mutex::new(hub));
    let endpoint = start_hub(hub.clone());
    let cache = tmp.path().join("cache");
    let cache_s = cache.to_str().unwrap().to_string();
    let env = [
        ("HF_ENDPOINT", endpoint.as_str()),
        ("HF_HUB_CACHE", cache_s.as_str()),
        ("HF_TOKEN", TOKEN),
    ];
    let generate = |model: &str, env: &[(&str, &str)]| {
        run(
            &[
                "generate",
                "--model",
                model,
                "--prompt",
                "Hi",
                "--max-tokens",
                "2",
                "--temperature",
                "0",
            ],
            env,
        )
    };
    let first = generate("test-org/tiny", &env);
    assert!(first.status.success(), "{}", text(&first));

    // The layout huggingface_hub uses: refs/main names the commit, snapshots/COMMIT/FILE
    // points into blobs/ETAG, and each blob is the file the Hub has.
    let repo = cache.join("models--test-org--tiny");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main"))
            .unwrap()
            .trim(),
        COMMIT
    );
    let snapshot = repo.join("snapshots").join(COMMIT);
    {
        let h = hub.lock().unwrap();
        for (name, f) in &h.files {
            let pointer = snapshot.join(name);
            assert!(pointer.is_symlink(), "{name}");
            assert_eq!(std::fs::read(&pointer).unwrap(), f.bytes, "{name}");
            assert!(repo.join("blobs").join(&f.etag).exists(), "{name}");
        }
        // After the cut, the shard was asked for from where the first attempt stopped.
        let shard_ranges: Vec<&str> = h
            .log
            .iter()
            .filter(|(f, r)| *f == shard && r != "bytes=0-0")
            .map(|(_, r)| r.as_str())
            .collect();
        assert_eq!(shard_ranges.len(), 2, "{shard_ranges:?}");
        assert_eq!(shard_ranges[0], "bytes=0-");
        let half = h.files[&shard].bytes.len() / 2;
        assert_eq!(shard_ranges[1], format!("bytes={half}-"));
    }

    // An earlier run that stopped a third of the way left a part file: the next run goes on
    // from it.
    let (etag, bytes) = {
        let h = hub.lock().unwrap();
        (h.files[&shard].etag.clone(), h.files[&shard].bytes.clone())
    };
    std::fs::remove_file(snapshot.join(&shard)).unwrap();
    std::fs::remove_file(repo.join("blobs").join(&etag)).unwrap();
    let third = bytes.len() / 3;
    std::fs::write(
        repo.join("blobs").join(format!("{etag}.part")),
        &bytes[..third],
    )
    .unwrap();
    hub.lock().unwrap().log.clear();
    let again = generate(&format!("test-org/tiny@{COMMIT}"), &env);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        hub.lock()
            .unwrap()
            .log
            .iter()
            .any(|(f, r)| *f == shard && *r == format!("bytes={third}-")),
        "the download restarted instead of resuming"
    );
    assert_eq!(std::fs::read(snapshot.join(&shard)).unwrap(), bytes);

    // Offline, the cache serves it with no Hub at all; a model it lacks is a clear error.
    let offline = [
        ("HF_ENDPOINT", "http://127.0.0.1:9"),
        ("HF_HUB_CACHE", cache_s.as_str()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let o = generate("test-org/tiny", &offline);
    assert!(o.status.success(), "{}", text(&o));
    let o = generate("test-org/other", &offline);
    assert!(!o.status.success());
    assert!(text(&o).contains("HF_HUB_OFFLINE"), "{}", text(&o));

    // A wrong token is refused with a hint; a corrupt download is caught and not used.
    let empty = tmp.path().join("empty");
    let empty_s = empty.to_str().unwrap();
    let o = generate(
        "test-org/tiny",
        &[
            ("HF_ENDPOINT", &endpoint),
            ("HF_HUB_CACHE", empty_s),
            ("HF_TOKEN", "wrong"),
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("HF_TOKEN"), "{}", text(&o));
    hub.lock().unwrap().corrupt = Some(shard.clone());
    let o = generate(
        "test-org/tiny",
        &[
            ("HF_ENDPOINT", &endpoint),
            ("HF_HUB_CACHE", empty_s),
            ("HF_TOKEN", TOKEN),
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("SHA-256"), "{}", text(&o));

    // Neither a folder nor an id: said so.
    let o = generate("no-such-folder", &env);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("not a Hugging Face model id"),
        "{}",
        text(&o)
    );
}
