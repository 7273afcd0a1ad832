//! The embedding example (examples/winit_chat.rs) under a virtual display (Xvfb) on whatever
//! adapter is there (lavapipe in CI): frames keep coming while the answer streams into the
//! window. Skipped without `xvfb-run` unless GPT_OSS_REQUIRE_GPU is set.

use std::path::PathBuf;
use std::process::Command;

/// The example binary `cargo test` builds next to this test's own.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples")
        .join(format!("winit_chat{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn the_window_keeps_drawing_while_tokens_stream_in() {
    if Command::new("xvfb-run").arg("--help").output().is_err() {
        assert!(
            std::env::var("GPT_OSS_REQUIRE_GPU").is_err(),
            "GPT_OSS_REQUIRE_GPU is set but xvfb-run is missing (tools/setup.sh installs it)"
        );
        eprintln!("skipping: no xvfb-run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = gpt_oss_wgpu::synth::SynthSpec::preset("tiny").unwrap();
    gpt_oss_wgpu::synth::write(dir.path(), &spec, 3, &mut |_, _| {}).unwrap();
    let out = Command::new("xvfb-run")
        .args(["-a", "-s", "-screen 0 800x600x24"])
        .arg(example())
        .arg("--model")
        .arg(dir.path())
        .args(["--prompt", "Hello", "--max-tokens", "5", "--frames", "20"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // "frames F (G while generating), tokens T, steps S; ..."
    let line = stdout
        .lines()
        .find(|l| l.starts_with("frames "))
        .expect(&stdout);
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .filter_map(|w| w.parse().ok())
        .collect();
    let (frames, while_generating, tokens) = (nums[0], nums[1], nums[2]);
    assert!(frames >= 20, "{line}");
    assert_eq!(tokens, 5, "every token arrived: {line}");
    // The render loop did not wait for the model: frames were drawn between the tokens.
    assert!(while_generating > tokens, "{line}");
}
