//! `drl stream`, `drl restore`, `drl image push|pull`, `drl job list|cancel`.
//!
//! Streams and restores into a resource run in the daemon (it owns the snapshot and the volume)
//! as jobs; the CLI follows the job's events and draws the progress bar. A restore into a file
//! and image transfers need no daemon and run here. Ctrl-C cancels the job.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use super::{connect, exit, node_name, runtime, Global};
use crate::config::{self, StreamConfig};
use crate::control::{EventFilter, EventKind, ObjectKind, Received};
use crate::shaping::NodeShaping;
use crate::stream::restore::{restore_to_file, RestoreOptions};
use crate::stream::store::{open_store, StoreUrl};
use crate::stream::{group, image, Progress, Report, StreamError};
use crate::units;

#[derive(Args, Debug)]
pub struct StreamArgs {
    /// The resource.
    pub resource: String,
    /// The snapshot to stream (see `drl snapshot create`).
    pub snapshot: String,
    /// Destination: swift://CONTAINER/PREFIX, or CONTAINER/PREFIX in the local vault, or
    /// ROOT::CONTAINER/PREFIX for a vault at ROOT.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Stream incrementally against this older snapshot (default: the newest older snapshot
    /// of the resource already in the store; none: a full stream).
    #[arg(long, value_name = "SNAP")]
    pub parent: Option<String>,
    /// Chunk size: the unit of change tracking and of the manifest (default from the config's
    /// [stream], else 1MiB).
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    pub chunk_size: Option<u64>,
    /// Largest object: stored chunks are packed into objects of up to this size (default
    /// 16MiB; at least the chunk size).
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    pub object_size: Option<u64>,
    /// Chunks read and objects uploaded at once.
    #[arg(long, value_name = "N")]
    pub parallel: Option<usize>,
    /// Store chunks uncompressed.
    #[arg(long)]
    pub no_compress: bool,
    /// Print the final report as JSON (no progress bar).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The snapshot in the store: swift://CONTAINER/PREFIX/SNAP (or a vault location).
    pub from: String,
    /// Target: a resource of the running daemon (a name), or a file (a path with a '/',
    /// e.g. ./vol.img); a file is created sparse and needs no daemon. A consistency group's
    /// snapshot restores into a directory instead: DIR/volume-N.img per volume.
    #[arg(long, value_name = "FILE|RES")]
    pub to: String,
    /// Objects fetched at once (default: `[stream] parallelism`).
    #[arg(long, value_name = "N")]
    pub parallel: Option<usize>,
    /// Print the final report as JSON (no progress bar).
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Copy a VM image to the store as a Static Large Object (segments plus manifest), so the
    /// object reads back as one image (what Glance's Swift store serves).
    Push {
        /// The image file to upload (raw, qcow2, ...: copied byte for byte).
        file: PathBuf,
        /// swift://CONTAINER/OBJECT (or a vault location).
        #[arg(long, value_name = "URL")]
        to: String,
        /// Segment size (raised automatically to stay within 1000 segments).
        #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
        segment_size: Option<u64>,
        /// Print the final report as JSON (no progress bar).
        #[arg(long)]
        json: bool,
    },
    /// Copy an image from the store into a file (every segment verified).
    Pull {
        /// The image in the store: swift://CONTAINER/OBJECT (or a vault location).
        from: String,
        /// The file to write (created or overwritten; sparse where the image has zeroes).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// Print the final report as JSON (no progress bar).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// Running and recently finished jobs of the daemon.
    List {
        /// Machine-readable JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Stop a running job (an interrupted stream resumes when started again).
    Cancel {
        /// The job's name, as `drl job list` shows it.
        job: String,
    },
}

fn bar(json: bool) -> ProgressBar {
    let b = ProgressBar::with_draw_target(
        Some(0),
        if json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    b.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    b
}

fn show(b: &ProgressBar, p: &Progress) {
    b.set_length(p.bytes_total);
    b.set_position(p.bytes_done);
    b.set_message(format!("sent {}", units::format_bytes(p.bytes_transferred)));
}

/// Print a final report: JSON, or a two-column table.
fn print_report(what: &str, r: &Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    let secs = r.elapsed_ms as f64 / 1000.0;
    let rate = if secs > 0.0 {
        r.bytes_read as f64 / secs
    } else {
        0.0
    };
    println!("{what} done in {secs:.1} s");
    let rows = [
        ("bytes read", units::format_bytes(r.bytes_read)),
        ("bytes uploaded", units::format_bytes(r.bytes_uploaded)),
        ("bytes downloaded", units::format_bytes(r.bytes_downloaded)),
        ("bytes written", units::format_bytes(r.bytes_written)),
        ("chunks total", r.chunks_total.to_string()),
        ("chunks uploaded", r.chunks_uploaded.to_string()),
        ("objects uploaded", r.objects_uploaded.to_string()),
        ("chunks skipped (zero)", r.chunks_skipped_zero.to_string()),
        (
            "chunks skipped (unchanged)",
            r.chunks_skipped_unchanged.to_string(),
        ),
        ("chunks resumed", r.chunks_resumed.to_string()),
        (
            "read rate",
            format!("{}/s", units::format_bytes(rate as u64)),
        ),
    ];
    for (k, v) in rows {
        println!("  {k:<28} {v}");
    }
}

/// Start a daemon job with `method` and follow it to the end.
fn run_job(g: &Global, method: &str, params: Value, what: &str, json: bool) -> i32 {
    runtime().block_on(async {
        let sub = match connect(g).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let mut events = match sub.subscribe(EventFilter::default()).await {
            Ok(e) => e,
            Err(e) => {
                eprintln!("drl: subscribing to events: {e}");
                return exit::FAILED;
            }
        };
        let mut client = match connect(g).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let started = match client.call(method, params).await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("drl {what}: {e}");
                return exit::FAILED;
            }
        };
        let job = started["job"].as_str().unwrap_or_default().to_owned();
        if let Some(parent) = started["parent"].as_str() {
            if !json {
                eprintln!("incremental against {parent}");
            }
        }
        let b = bar(json);
        loop {
            let ev = tokio::select! {
                ev = events.next() => ev,
                _ = tokio::signal::ctrl_c() => {
                    b.abandon_with_message("interrupted: cancelling the job");
                    let _ = client.call("job.cancel", json!({ "job": job })).await;
                    return 130;
                }
            };
            match ev {
                Ok(Some(Received::Event(ev))) if ev.object == ObjectKind::Job && ev.name == job => {
                    match ev.kind {
                        EventKind::Progress => {
                            if let Ok(p) = serde_json::from_value::<Progress>(
                                ev.fields.get("progress").cloned().unwrap_or_default(),
                            ) {
                                show(&b, &p);
                            }
                        }
                        EventKind::Destroy => {
                            b.finish_and_clear();
                            if let Some(r) = ev
                                .fields
                                .get("report")
                                .and_then(|r| serde_json::from_value::<Report>(r.clone()).ok())
                            {
                                print_report(what, &r, json);
                                return exit::OK;
                            }
                            let err = ev
                                .fields
                                .get("error")
                                .and_then(Value::as_str)
                                .unwrap_or("unknown error");
                            eprintln!("drl {what}: {err}");
                            return exit::FAILED;
                        }
                        _ => {}
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    b.abandon();
                    eprintln!("drl {what}: the daemon closed the connection (job {job})");
                    return exit::UNREACHABLE;
                }
                Err(e) => {
                    b.abandon();
                    eprintln!("drl {what}: {e}");
                    return exit::UNREACHABLE;
                }
            }
        }
    })
}

pub fn stream(g: &Global, a: &StreamArgs) -> i32 {
    let mut params = json!({ "resource": a.resource, "snapshot": a.snapshot, "to": a.to });
    if let Some(p) = &a.parent {
        params["parent"] = json!(p);
    }
    if let Some(c) = a.chunk_size {
        params["chunk_size"] = json!(c);
    }
    if let Some(o) = a.object_size {
        params["object_size"] = json!(o);
    }
    if let Some(n) = a.parallel {
        params["parallelism"] = json!(n);
    }
    if a.no_compress {
        params["compression"] = json!("none");
    }
    run_job(g, "stream.start", params, "stream", a.json)
}

/// Swift credentials and stream defaults for commands that run here: from `--config` when
/// given (its [swift] and [stream]), else the OpenStack environment and drl's defaults.
fn local_settings(
    g: &Global,
) -> Result<(Option<crate::stream::auth::SwiftAuth>, LocalSettings), String> {
    match &g.config {
        Some(file) => config::load(file, &node_name(g))
            .map(|c| {
                // Image transfers run in this process: shape them with [shaping] too (this
                // process's own shaper; it does not share the daemon's link cap).
                let shaping = NodeShaping::new(c.shaping.clone(), c.resync.clone());
                let s = LocalSettings {
                    stream: c.stream,
                    shaping,
                };
                (c.swift, s)
            })
            .map_err(|e| e.to_string()),
        None => Ok((
            None,
            LocalSettings {
                stream: config::default_stream_config(),
                shaping: NodeShaping::counting(),
            },
        )),
    }
}

/// What a transfer that runs in this process uses: `[stream]` and its own WAN shaping.
struct LocalSettings {
    stream: StreamConfig,
    shaping: NodeShaping,
}

fn local<F, Fut>(g: &Global, what: &str, url: &str, json: bool, f: F) -> i32
where
    F: FnOnce(
        crate::stream::store::AnyStore,
        StoreUrl,
        LocalSettings,
        Box<dyn Fn(Progress) + Send + Sync>,
    ) -> Fut,
    Fut: std::future::Future<Output = Result<Report, crate::stream::StreamError>>,
{
    let (auth, settings) = match local_settings(g) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("drl {what}: {e}");
            return exit::USAGE;
        }
    };
    let parsed = match StoreUrl::parse(url) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("drl {what}: {e}");
            return exit::USAGE;
        }
    };
    let store = match open_store(&parsed, auth, &settings.stream.vault_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("drl {what}: {e}");
            return exit::USAGE;
        }
    };
    let b = bar(json);
    let b2 = b.clone();
    let res = runtime().block_on(f(store, parsed, settings, Box::new(move |p| show(&b2, &p))));
    b.finish_and_clear();
    match res {
        Ok(r) => {
            print_report(what, &r, json);
            exit::OK
        }
        Err(e) => {
            eprintln!("drl {what}: {e}");
            exit::FAILED
        }
    }
}

pub fn restore(g: &Global, a: &RestoreArgs) -> i32 {
    if !a.to.contains('/') {
        let mut params = json!({ "from": a.from, "resource": a.to });
        if let Some(n) = a.parallel {
            params["parallelism"] = json!(n);
        }
        return run_job(g, "restore.start", params, "restore", a.json);
    }
    let target = PathBuf::from(&a.to);
    let parallel = a.parallel;
    local(
        g,
        "restore",
        &a.from,
        a.json,
        move |store, url, settings, progress| async move {
            let (loc, snap) = url.split_last()?;
            let opts = RestoreOptions {
                parallelism: parallel.unwrap_or(settings.stream.parallelism),
            };
            // A consistency group's stream: every volume into DIR/volume-N.img, or nothing.
            if group::read_record(&store, &loc, &snap).await?.is_some() {
                return group::restore_to_dir(&store, &loc, &snap, &target, &opts, progress).await;
            }
            if group::incomplete(&store, &loc, &snap).await? {
                return Err(StreamError::Config(format!(
                    "{}: volumes of a consistency group but no group record: an interrupted group stream, nothing restored",
                    loc.join(&snap)
                )));
            }
            restore_to_file(&store, &loc, &snap, &target, &opts, progress).await
        },
    )
}

pub fn image(g: &Global, c: &ImageCmd) -> i32 {
    match c {
        ImageCmd::Push {
            file,
            to,
            segment_size,
            json,
        } => {
            let file = file.clone();
            let seg = *segment_size;
            local(
                g,
                "image push",
                to,
                *json,
                move |store, url, settings, progress| async move {
                    let (container, object) = image::object_of(&url)?;
                    let mut opts = image::ImageOptions {
                        parallelism: settings.stream.parallelism,
                        shaper: settings.shaping.shaper.clone(),
                        ..Default::default()
                    };
                    if let Some(s) = seg {
                        opts.segment_bytes = s;
                    }
                    image::push(&store, &file, &container, &object, &opts, progress).await
                },
            )
        }
        ImageCmd::Pull { from, to, json } => {
            let to = to.clone();
            local(
                g,
                "image pull",
                from,
                *json,
                move |store, url, _settings, progress| async move {
                    let (container, object) = image::object_of(&url)?;
                    image::pull(&store, &container, &object, &to, progress).await
                },
            )
        }
    }
}

pub fn job(g: &Global, c: &JobCmd) -> i32 {
    match c {
        JobCmd::List { json } => {
            super::call_and_print(g, "job.list", json!({}), *json, render_jobs)
        }
        JobCmd::Cancel { job } => {
            super::call_and_print(g, "job.cancel", json!({ "job": job }), false, |_| {
                format!("job {job} cancelled\n")
            })
        }
    }
}

fn render_jobs(v: &Value) -> String {
    let mut out = format!(
        "{:<28} {:<10} {:<10} {:>8}  {}\n",
        "JOB", "RESOURCE", "STATE", "DONE", "DETAIL"
    );
    for j in v["jobs"].as_array().into_iter().flatten() {
        let pct = match (
            j["progress"]["bytes_done"].as_u64(),
            j["progress"]["bytes_total"].as_u64(),
        ) {
            (Some(d), Some(t)) if t > 0 => format!("{:.1}%", d as f64 * 100.0 / t as f64),
            _ => "-".into(),
        };
        let detail = j["error"].as_str().map(str::to_owned).unwrap_or_else(|| {
            j["report"]["bytes_uploaded"]
                .as_u64()
                .map_or(String::new(), |b| {
                    format!("uploaded {}", units::format_bytes(b))
                })
        });
        out.push_str(&format!(
            "{:<28} {:<10} {:<10} {:>8}  {}\n",
            j["name"].as_str().unwrap_or("?"),
            j["resource"].as_str().unwrap_or("?"),
            j["state"].as_str().unwrap_or("?"),
            pct,
            detail
        ));
    }
    out
}
