//! The userspace pipeline on kernel records recorded from a real run (a restart under client
//! load on the test bed): decode -> correlate -> detect -> serialize, the path every record
//! takes in a session, in kernel events (records) per second on one core, and decoding alone.
//! A record becomes at most one event line; queue records are observations that become a
//! `queue` line only when the depth changes: how many lines the records made is written to
//! `criterion/pipeline/stream.json` beside criterion's own figures.
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sockact_agent::{
    clock::Clock,
    correlate::{Attribution, queue::QueueTracker},
    decode,
    detect::Engine,
    events::{Data, Event, SCHEMA_VERSION},
    summary::Tally,
    systemd::Catalog,
};

const RECORDS: &[u8] = include_bytes!("../../tests/fixtures/records/restart_under_load.bin");

struct Pipeline {
    clock: Clock,
    attribution: Attribution,
    queues: QueueTracker,
    engine: Engine,
    tally: Tally,
    out: Vec<u8>,
}

impl Pipeline {
    fn new() -> Self {
        Pipeline {
            clock: Clock::new(),
            attribution: Attribution::new(Catalog::default()),
            queues: QueueTracker::default(),
            engine: Engine::default(),
            tally: Tally::default(),
            out: Vec::with_capacity(4 << 20),
        }
    }

    fn write(&mut self, e: &Event) {
        self.tally.observe(e);
        serde_json::to_writer(&mut self.out, e).expect("serializable");
        self.out.push(b'\n');
    }

    fn publish(&mut self, e: Event) {
        self.queues.learn(&e, |_| false);
        let findings = self.engine.observe(&e);
        self.write(&e);
        for f in findings {
            let finding = Event {
                v: SCHEMA_VERSION,
                seq: 0,
                ts: e.ts.clone(),
                host: e.host.clone(),
                data: Data::Finding(f),
                process: None,
            };
            self.write(&finding);
        }
    }

    fn record(&mut self, bytes: &[u8]) {
        let record = decode::parse(bytes).expect("a recorded record decodes");
        if let Some(mut e) = record.to_event(&self.clock, "bench") {
            let at_exec = record.cgroup_name();
            self.attribution.enrich(&mut e, &|_| at_exec.clone());
            self.publish(e);
        }
        if let Some(o) = record.queue_observation(&self.clock) {
            for (ts, data) in self.queues.observe(o) {
                let e = Event {
                    v: SCHEMA_VERSION,
                    seq: 0,
                    ts: sockact_agent::clock::rfc3339(ts),
                    host: "bench".into(),
                    data,
                    process: None,
                };
                self.publish(e);
            }
        }
    }
}

fn pipeline(c: &mut Criterion) {
    let records: Vec<&[u8]> = decode::recorded(RECORDS).collect();
    assert!(records.len() > 900, "{} records", records.len());
    // One pass first: how many events (NDJSON lines, findings included) the records make.
    let mut once = Pipeline::new();
    for r in &records {
        once.record(r);
    }
    let events = once.out.iter().filter(|&&b| b == b'\n').count();
    assert!(events > 400, "{events} events");
    let dir = std::path::Path::new(&std::env::var("CARGO_TARGET_DIR").unwrap_or("target".into()))
        .join("criterion/pipeline");
    std::fs::create_dir_all(&dir).expect("criterion's directory");
    let stream = format!(r#"{{"records": {}, "events": {events}}}"#, records.len());
    std::fs::write(dir.join("stream.json"), stream).expect("writing stream.json");
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("decode_correlate_detect_serialize", |b| {
        b.iter_batched(
            Pipeline::new,
            |mut p| {
                for r in &records {
                    p.record(r);
                }
                p.out.len()
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("decode", |b| {
        b.iter(|| records.iter().filter(|r| decode::parse(r).is_ok()).count())
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
