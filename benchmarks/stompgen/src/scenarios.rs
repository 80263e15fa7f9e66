//! loadgen.py's scenarios with one OS thread per connection. On the hot path
//! the workers share only atomics (the seen-bitmap and distinct counter of
//! pooled queue consumers, the producer-done and abort flags); the start
//! gate and the result channel are used once per worker.

use crate::conn::{seed, ws_begin, ws_end, Conn};
use crate::frame::{header, parse_u64, push_u64};
use crate::{cpu_seconds, num_json as num, quote, Json, Mode, Opts};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Producers write about this many bytes at a time (pipelining).
const BATCH: usize = 256 * 1024;

type Bits = Arc<Vec<AtomicU64>>;

fn bitmap(bits: u64) -> Bits {
    Arc::new((0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
}

/// What a run's workers share.
struct Shared {
    opts: Opts,
    base: Instant,     // the origin of `ts` headers (nanoseconds since it)
    deadline: Instant, // --timeout from the start (plus --seconds for latency, as loadgen)
    go: Mutex<Option<Instant>>, // the start gate: when it opened
    go_cv: Condvar,
    producer_done: AtomicBool,
    abort: AtomicBool,  // a worker failed: the others stop early
    counter: AtomicU64, // distinct messages received by the pooled consumers,
    seen: Bits,         // and which
    tx: Sender<Msg>,
}

impl Shared {
    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }
    /// An error past the deadline; false once another worker failed.
    fn check(&self) -> Result<bool, String> {
        if Instant::now() > self.deadline {
            return Err("deadline".into());
        }
        Ok(!self.abort.load(Relaxed))
    }
}

/// A worker's figures (loadgen's per-worker dict).
#[derive(Default)]
struct Out {
    role: &'static str,
    error: String,
    cpu0: Option<f64>, // the thread's CPU clock at the gate (or its start, if after it)
    cpu_s: f64,
    received: u64,
    duplicates: u64,
    done_at: Option<Instant>,
    receipts: u64,
    receipted_at: Option<Instant>,
    behind_max: f64,
    latencies: Vec<i64>,
}

enum Msg {
    Ready,
    Done(Out),
}

/// Report ready, wait for the gate (when it opened), start the thread's CPU clock.
fn ready(sh: &Shared, out: &mut Out) -> Result<Instant, String> {
    let _ = sh.tx.send(Msg::Ready);
    let mut go = sh.go.lock().unwrap();
    while go.is_none() {
        let left = sh.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("deadline".into());
        }
        go = sh.go_cv.wait_timeout(go, left).unwrap().0;
    }
    out.cpu0.get_or_insert_with(|| cpu_seconds(true));
    Ok(go.unwrap())
}

/// Start a worker thread; its Out (error prefixed with its role, CPU) goes to the run.
fn spawn<F>(sh: &Arc<Shared>, role: &'static str, work: F)
where
    F: FnOnce(&Shared, &mut Out) -> Result<(), String> + Send + 'static,
{
    let (sh, late) = (sh.clone(), sh.go.lock().unwrap().is_some());
    std::thread::spawn(move || {
        let mut out = Out { role, cpu0: late.then(|| cpu_seconds(true)), ..Default::default() };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&sh, &mut out)));
        if let Err(e) = r.unwrap_or_else(|_| Err("panic".into())) {
            out.error = format!("{role}: {e}");
            sh.abort.store(true, Relaxed);
        }
        if role == "producer" {
            sh.producer_done.store(true, Relaxed);
        }
        out.cpu_s = out.cpu0.map_or(0.0, |c| cpu_seconds(true) - c);
        let _ = sh.tx.send(Msg::Done(out));
    });
}

/// Builds SEND frames: `SEND\ndestination:D\n[persistent:true\n]content-length:S\n
/// [receipt:SEQ\n]seq:SEQ\n[ts:T\n]\n` + S bytes of 'x' + NUL.
struct Sends {
    prefix: Vec<u8>,
    tail: Vec<u8>,
    ws: bool,
    rng: u64,
}

impl Sends {
    fn new(o: &Opts, persistent: bool) -> Sends {
        let extra = if persistent { "persistent:true\n" } else { "" };
        let prefix = format!("SEND\ndestination:{}\n{extra}content-length:{}\n", o.destination, o.size);
        let mut tail = vec![b'x'; o.size];
        tail.push(0);
        Sends { prefix: prefix.into_bytes(), tail, ws: o.ws, rng: seed() }
    }

    fn push(&mut self, buf: &mut Vec<u8>, seq: u64, receipt: bool, ts: Option<u64>) {
        let mark = ws_begin(buf, self.ws);
        buf.extend_from_slice(&self.prefix);
        if receipt {
            buf.extend_from_slice(b"receipt:");
            push_u64(buf, seq);
            buf.push(b'\n');
        }
        buf.extend_from_slice(b"seq:");
        push_u64(buf, seq);
        if let Some(ts) = ts {
            buf.extend_from_slice(b"\nts:");
            push_u64(buf, ts);
        }
        buf.extend_from_slice(b"\n\n");
        buf.extend_from_slice(&self.tail);
        ws_end(buf, mark, self.ws, 1, &mut self.rng);
    }
}

/// Count the RECEIPTs among the frames read so far; any other frame is an error.
fn receipts_in(conn: &mut Conn) -> Result<u64, String> {
    let mut n = 0;
    while let Some(f) = conn.parse() {
        if conn.command(&f) != b"RECEIPT" {
            return Err(format!("got {}", conn.describe(&f)));
        }
        n += 1;
    }
    Ok(n)
}

/// Pipeline SENDs `first..first + count`; with --persistent each has a
/// receipt, read between batches (not waiting), then until all came.
/// DISCONNECT's receipt means the broker has read them all.
fn producer(sh: &Shared, out: &mut Out, first: u64, count: u64) -> Result<(), String> {
    let o = &sh.opts;
    let mut conn = Conn::open(o, sh.deadline)?;
    ready(sh, out)?;
    let mut sends = Sends::new(o, o.persistent);
    let mut buf = Vec::with_capacity(BATCH + o.size + 4096);
    let want = if o.persistent { count } else { 0 };
    for seq in first..first + count {
        sends.push(&mut buf, seq, o.persistent, None);
        if buf.len() >= BATCH || seq + 1 == first + count {
            conn.write(&buf)?;
            buf.clear();
            while want > 0 && conn.fill(false)? {
                out.receipts += receipts_in(&mut conn)?;
            }
            if !sh.check()? {
                return Ok(());
            }
        }
    }
    while out.receipts < want {
        let left = format!("{} of {want} receipts", out.receipts);
        if !sh.check().map_err(|e| format!("{e}: {left}"))? {
            return Ok(());
        }
        conn.fill(true)?;
        out.receipts += receipts_in(&mut conn)?;
    }
    out.receipted_at = Some(Instant::now());
    conn.disconnect(sh.deadline)
}

/// Open loop: message i is due at start + i / rate, carries that time (ns
/// since `base`) in `ts`, and is written as soon as it is due (with any
/// others that fell due meanwhile); the thread sleeps in between.
fn timed_producer(sh: &Shared, out: &mut Out) -> Result<(), String> {
    let o = &sh.opts;
    if o.realtime {
        crate::realtime()?;
    }
    let mut conn = Conn::open(o, sh.deadline)?;
    let start = sh.ns(ready(sh, out)?);
    let (mut sends, mut buf) = (Sends::new(o, false), Vec::new());
    let count = (o.rate * o.seconds) as u64;
    let due_at = |i: u64| start + (i as f64 * 1e9 / o.rate) as u64;
    let mut i = 0;
    while i < count {
        if !sh.check()? {
            return Ok(());
        }
        let now = sh.ns(Instant::now());
        let due = count.min((now.saturating_sub(start) as f64 * o.rate / 1e9) as u64 + 1);
        if due <= i {
            let nap = Duration::from_nanos(due_at(i).saturating_sub(now));
            std::thread::sleep(nap.min(Duration::from_millis(10)));
            continue;
        }
        out.behind_max = out.behind_max.max(now.saturating_sub(due_at(i)) as f64 / 1e9);
        buf.clear();
        for seq in i..due {
            sends.push(&mut buf, seq, false, Some(due_at(seq)));
        }
        conn.write(&buf)?;
        i = due;
    }
    conn.disconnect(sh.deadline)
}

/// A consumer's counting: see loadgen's ConsumerSpec and Tally.
struct Tally {
    total: u64,
    pooled: bool,
    latency: bool,
    bits: Bits,
    acks: Vec<u8>,
    rng: u64,
    subscribed: bool,
}

impl Tally {
    /// Count the MESSAGEs read so far (the ACKs of client-individual go
    /// out in one write); return how many frames there were.
    fn count(&mut self, conn: &mut Conn, sh: &Shared, out: &mut Out, now: Instant) -> Result<u64, String> {
        let now_ns = sh.ns(now) as i64;
        let (ws, mut frames, mut fresh) = (conn.ws, 0, 0);
        self.acks.clear();
        while let Some(f) = conn.parse() {
            frames += 1;
            let data = &conn.data;
            let command = conn.command(&f);
            if command == b"RECEIPT" && !self.subscribed {
                self.subscribed = true;
                continue;
            } else if command != b"MESSAGE" {
                return Err(format!("got {}", conn.describe(&f)));
            }
            let seq = header(data, &f, b"seq").and_then(parse_u64).ok_or("MESSAGE without a seq")?;
            if seq >= self.total {
                return Err(format!("seq {seq} out of range"));
            }
            let bit = 1u64 << (seq & 63);
            if self.bits[(seq >> 6) as usize].fetch_or(bit, Relaxed) & bit != 0 {
                out.duplicates += 1;
            } else {
                out.received += 1;
                fresh += 1;
            }
            if self.latency {
                let ts = header(data, &f, b"ts").and_then(parse_u64).ok_or("MESSAGE without a ts")?;
                out.latencies.push(now_ns - ts as i64);
            }
            if sh.opts.ack_each {
                let id = header(data, &f, b"ack").ok_or("MESSAGE without an ack header")?;
                let mark = ws_begin(&mut self.acks, ws);
                self.acks.extend_from_slice(b"ACK\nid:");
                self.acks.extend_from_slice(id);
                self.acks.extend_from_slice(b"\n\n\0");
                ws_end(&mut self.acks, mark, ws, 1, &mut self.rng);
            }
        }
        if !self.acks.is_empty() {
            conn.write(&self.acks)?;
        }
        if self.pooled && fresh > 0 {
            sh.counter.fetch_add(fresh, Relaxed);
        }
        Ok(frames)
    }
}

/// SUBSCRIBE (receipt awaited), then count MESSAGEs until the pool has all
/// `total` (pooled), or this one has, or `idle` seconds without data have
/// passed since the producer finished (or since the last data, if later).
fn consumer(sh: &Shared, out: &mut Out, total: u64, pooled: bool, latency: bool) -> Result<(), String> {
    let o = &sh.opts;
    let bits = if pooled { sh.seen.clone() } else { bitmap(total) };
    let mut t = Tally { total, pooled, latency, bits, acks: Vec::new(), rng: seed(), subscribed: false };
    if latency && o.realtime {
        crate::realtime()?;
    }
    if latency {
        out.latencies.reserve(total as usize);
    }
    let mut conn = Conn::open_at(o, o.consumer_port, sh.deadline)?;
    let ack = if o.ack_each { "client-individual" } else { "auto" };
    conn.send(&format!("SUBSCRIBE\ndestination:{}\nid:0\nack:{ack}\nreceipt:sub\n\n\0", o.destination))?;
    // Messages may come before the receipt (a backlog): they count too.
    while !t.subscribed {
        sh.check()?;
        if conn.fill(true)? {
            let now = Instant::now();
            if t.count(&mut conn, sh, out, now)? > 0 {
                out.done_at = Some(now);
            }
        }
    }
    ready(sh, out)?;
    let idle = Duration::from_secs_f64(o.idle);
    let (mut last_data, mut done_mark) = (Instant::now(), None::<Instant>);
    while sh.check()? {
        let now = Instant::now();
        let done = sh.producer_done.load(Relaxed);
        let quiet = now - done_mark.map_or(last_data, |d| d.max(last_data));
        if pooled && sh.counter.load(Relaxed) >= total
            || !pooled && (out.received >= total || done && quiet > idle)
        {
            break;
        }
        if done && done_mark.is_none() {
            done_mark = Some(now);
        }
        if conn.fill(true)? {
            let now = Instant::now();
            if t.count(&mut conn, sh, out, now)? > 0 {
                (last_data, out.done_at) = (now, Some(now));
            }
        }
    }
    Ok(())
}

/// The workers of one run: spawned, waited for, started, collected.
struct Run {
    sh: Arc<Shared>,
    rx: Receiver<Msg>,
    outs: Vec<Out>,
    errors: Vec<String>,
    cpu0: f64,
    cpu1: f64,
    start: Instant,
    end: Instant,
}

impl Run {
    /// Wait until `ready` more workers are ready (a worker failing before
    /// that counts) and `done` in all have finished; at most until a little
    /// past the deadline (the workers watch it themselves: this is a backstop).
    fn wait(&mut self, mut ready: usize, done: usize) {
        while ready > 0 || self.outs.len() < done {
            let limit = (self.sh.deadline + Duration::from_secs(5)).saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(limit) {
                Ok(msg) => {
                    if let Msg::Done(out) = msg {
                        self.outs.push(out);
                    }
                    ready = ready.saturating_sub(1);
                }
                Err(_) if self.errors.is_empty() => return self.errors.push("deadline".into()),
                Err(_) => return,
            }
        }
    }

    /// With --gate print READY and wait for a line (GO); open the gate.
    fn go(&mut self) {
        if self.sh.opts.gate {
            let _ = writeln!(std::io::stdout(), "READY").and(std::io::stdout().flush());
            let _ = std::io::stdin().lock().read_line(&mut String::new());
        }
        (self.cpu0, self.start) = (cpu_seconds(false), Instant::now());
        *self.sh.go.lock().unwrap() = Some(self.start);
        self.sh.go_cv.notify_all();
    }

    /// Collect all `n` workers: the measured part ends.
    fn finish(&mut self, n: usize) {
        self.wait(0, n);
        (self.cpu1, self.end) = (cpu_seconds(false), Instant::now());
    }

    fn role(&self, role: &'static str) -> impl Iterator<Item = &Out> + '_ {
        self.outs.iter().filter(move |o| o.role == role)
    }

    /// The workers' errors, then the run's, "; "-joined, at most 500 characters.
    fn error(&self) -> String {
        let all = self.outs.iter().map(|o| &o.error).chain(&self.errors);
        let errors: Vec<&str> = all.filter(|e| !e.is_empty()).map(|e| e.as_str()).collect();
        errors.join("; ").chars().take(500).collect()
    }

    /// The keys every scenario ends with. The busiest thread's share is of
    /// the measured part (gate to every worker done: about `seconds`).
    fn costs(&self, j: &mut Json) -> String {
        let threads: Vec<String> = (self.outs.iter())
            .map(|o| format!("{{\"role\": {}, \"cpu_s\": {}}}", quote(o.role), num(o.cpu_s)))
            .collect();
        let busiest = self.outs.iter().map(|o| o.cpu_s).fold(0.0, f64::max);
        j.add("gen_cpu_s", num(self.cpu1 - self.cpu0))
            .add("error", quote(&self.error()))
            .add("gen_threads", format!("[{}]", threads.join(", ")))
            .add("gen_busiest_thread_share", num(busiest / secs(self.start, self.end).max(1e-9)))
            .add("generator", quote("stompgen"))
            .finish()
    }
}

/// b - a in seconds (negative if b is earlier).
fn secs(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64() - a.saturating_duration_since(b).as_secs_f64()
}

/// loadgen's `_delivery` figures.
fn delivery(j: &mut Json, received: u64, expected: u64, duplicates: u64, size: usize, seconds: f64) {
    j.add("msgs_per_s", num(received as f64 / seconds))
        .add("mb_per_s", num(received as f64 * size as f64 / seconds / 1e6))
        .add("seconds", num(seconds))
        .add("messages", expected)
        .add("received", received)
        .add("duplicates", duplicates)
        .add("lost", expected as i64 - received as i64);
}

/// loadgen's `_percentile` of latencies in ns, in seconds (Python's round: half to even).
fn percentile(sorted: &[i64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64 + 0.5).round_ties_even() as usize;
    let i = rank.clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).map_or(f64::NAN, |&v| v as f64 / 1e9)
}

/// Run the scenario of `opts`: the JSON line to print.
pub fn run(mut opts: Opts) -> String {
    if opts.destination.is_empty() {
        let mut id = [0u8; 6];
        crate::urandom(&mut id);
        let kind = ["queue/bench", "topic/bench", "queue/lat"][opts.mode as usize];
        opts.destination = format!("/{kind}-{}", id.map(|b| format!("{b:02x}")).concat());
    }
    let base = Instant::now();
    let extra = if opts.mode == Mode::Latency { opts.seconds } else { 0.0 };
    let (tx, rx) = channel();
    let sh = Arc::new(Shared {
        deadline: base + Duration::from_secs_f64(opts.timeout + extra),
        seen: bitmap(if opts.mode == Mode::Throughput { opts.messages } else { 0 }),
        opts,
        base,
        go: Mutex::new(None),
        go_cv: Condvar::new(),
        producer_done: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        counter: AtomicU64::new(0),
        tx,
    });
    let (cpu0, cpu1, start, end) = (0.0, 0.0, base, base);
    let mut run = Run { sh, rx, outs: Vec::new(), errors: Vec::new(), cpu0, cpu1, start, end };
    let o = run.sh.opts.clone();
    match o.mode {
        Mode::Throughput => throughput(&mut run, &o),
        Mode::Fanout => fanout(&mut run, &o),
        Mode::Latency => latency(&mut run, &o),
    }
}

/// Queue: P producers, C pooled consumers, N messages; see loadgen's `throughput`.
fn throughput(run: &mut Run, o: &Opts) -> String {
    let (n, size) = (o.messages, o.size);
    let spawn_consumers = |run: &mut Run| {
        for _ in 0..o.consumers {
            spawn(&run.sh, "consumer", move |sh, out| consumer(sh, out, n, true, false));
        }
    };
    if !o.backlog {
        spawn_consumers(run);
        run.wait(o.consumers, 0);
    }
    let (p, mut first) = (o.producers as u64, 0);
    for i in 0..p {
        let count = n / p + u64::from(i < n % p);
        spawn(&run.sh, "producer", move |sh, out| producer(sh, out, first, count));
        first += count;
    }
    run.wait(o.producers, 0);
    run.go();
    let (start, mut drain_start) = (run.start, run.start);
    if o.backlog {
        // The consumers subscribe once every producer is done (all SENDs receipted).
        run.wait(0, o.producers);
        drain_start = Instant::now();
        spawn_consumers(run);
    }
    run.finish(o.producers + o.consumers);
    let distinct: u64 = run.sh.seen.iter().map(|w| w.load(Relaxed).count_ones() as u64).sum();
    let dup: u64 = run.role("consumer").map(|c| c.duplicates).sum();
    let receipts: u64 = run.role("producer").map(|p| p.receipts).sum();
    let receipted = run.role("producer").filter_map(|p| p.receipted_at).max().map_or(0.0, |t| secs(start, t));
    let mut end = run.role("consumer").filter_map(|c| c.done_at).max().map_or(0.0, |t| secs(start, t));
    if o.persistent {
        end = end.max(receipted);
    }
    let seconds = end.max(1e-9);
    let ok = distinct == n && dup == 0 && run.error().is_empty() && (receipts == n || !o.persistent);
    let mut j = Json::default();
    if o.persistent {
        j.add("receipts", receipts).add("receipt_seconds", num(receipted));
    }
    if o.backlog {
        j.add("stored_per_s", num(receipts as f64 / receipted.max(1e-9)))
            .add("drain_per_s", num(distinct as f64 / (end - secs(start, drain_start)).max(1e-9)));
    }
    delivery(&mut j, distinct, n, dup, size, seconds);
    j.add("ok", ok);
    run.costs(&mut j)
}

/// Topic: 1 producer, K subscribers; see loadgen's `fanout`.
fn fanout(run: &mut Run, o: &Opts) -> String {
    let n = o.messages;
    for _ in 0..o.subscribers {
        spawn(&run.sh, "consumer", move |sh, out| consumer(sh, out, n, false, false));
    }
    run.wait(o.subscribers, 0);
    spawn(&run.sh, "producer", move |sh, out| producer(sh, out, 0, n));
    run.wait(1, 0);
    run.go();
    run.finish(o.subscribers + 1);
    let delivered: u64 = run.role("consumer").map(|c| c.received).sum();
    let dup: u64 = run.role("consumer").map(|c| c.duplicates).sum();
    let expected = n * o.subscribers as u64;
    let end = run.role("consumer").filter_map(|c| c.done_at).max();
    let seconds = end.map_or(0.0, |t| secs(run.start, t)).max(1e-9);
    let mut j = Json::default();
    delivery(&mut j, delivered, expected, dup, o.size, seconds);
    j.add("ok", delivered == expected && run.error().is_empty());
    run.costs(&mut j)
}

/// Open-loop latency at --rate for --seconds; see loadgen's `latency`.
fn latency(run: &mut Run, o: &Opts) -> String {
    let count = (o.rate * o.seconds) as u64;
    spawn(&run.sh, "consumer", move |sh, out| consumer(sh, out, count, false, true));
    run.wait(1, 0);
    spawn(&run.sh, "producer", timed_producer);
    run.wait(1, 0);
    run.go();
    run.finish(2);
    let mut lat: Vec<i64> = run.role("consumer").flat_map(|c| c.latencies.iter().copied()).collect();
    lat.sort_unstable();
    let received: u64 = run.role("consumer").map(|c| c.received).sum();
    let behind = run.role("producer").map(|p| p.behind_max).fold(0.0, f64::max);
    let mut j = Json::default();
    j.add("rate", num(o.rate))
        .add("p50_ms", num(percentile(&lat, 0.50) * 1e3))
        .add("p99_ms", num(percentile(&lat, 0.99) * 1e3))
        .add("p999_ms", num(percentile(&lat, 0.999) * 1e3))
        .add("max_ms", num(lat.last().map_or(f64::NAN, |&v| v as f64 / 1e6)))
        .add("producer_behind_max_ms", num(behind * 1e3))
        .add("messages", count)
        .add("received", received)
        .add("lost", count as i64 - received as i64)
        .add("ok", received == count && run.error().is_empty());
    run.costs(&mut j)
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentile_rounds_as_python() {
        let v: Vec<i64> = (1..=10).map(|x| x * 1_000_000_000).collect();
        assert_eq!(super::percentile(&v, 0.5), 6.0); // round(5.5) == 6: index 5
        assert_eq!(super::percentile(&v[..4], 0.5), 2.0); // round(2.5) == 2: index 1
        assert_eq!(super::percentile(&v, 0.999), 10.0);
        assert!(super::percentile(&[], 0.5).is_nan());
    }
}
