//! stompgen: a compiled STOMP 1.2 load generator mirroring the scenarios of
//! benchmarks/loadgen.py (throughput, fanout, latency), so that compare.py
//! can run either. Standard library only; Linux; loopback only. One OS
//! thread per connection. Prints one JSON object with loadgen's keys plus
//! the generator's own CPU time (whole process, and per thread).

mod conn;
mod frame;
mod scenarios;

use std::io::{Read, Write};
use std::net::IpAddr;

const USAGE: &str = "usage: stompgen <throughput|fanout|latency> --port N [--host 127.0.0.1]
    [--consumer-port N (consumers and subscribers there; default --port)] [--transport tcp|ws] [--ws-path /ws] [--header name:value ...] [--destination D]
    [--timeout SECONDS] [--gate]
  throughput: --producers P --consumers C --messages N --size S
              [--ack auto|client-individual] [--persistent] [--backlog]
  fanout:     --subscribers K --messages N --size S [--idle 3.0]
  latency:    --rate R --seconds S [--size 100] [--idle 3.0] [--realtime]
              (--realtime: the producer and consumer threads run SCHED_FIFO, so
              their own wake-ups do not add to the latency measured)";

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Throughput,
    Fanout,
    Latency,
}

/// The command line, checked.
#[derive(Clone)]
pub struct Opts {
    pub mode: Mode,
    pub ip: IpAddr,
    pub port: u16,
    /// Where consumers and subscribers connect (another node of a cluster).
    pub consumer_port: u16,
    pub ws: bool,
    pub ws_path: String,
    pub headers: Vec<(String, String)>,
    pub destination: String,
    pub timeout: f64,
    pub producers: usize,
    pub consumers: usize,
    pub messages: u64,
    pub size: usize,
    pub ack_each: bool,
    pub persistent: bool,
    pub backlog: bool,
    pub subscribers: usize,
    pub idle: f64,
    pub rate: f64,
    pub seconds: f64,
    pub gate: bool,
    pub realtime: bool,
}

const VALUED: &[&str] = &[
    "host", "port", "consumer-port", "transport", "ws-path", "header", "destination", "timeout", "producers",
    "consumers", "messages", "size", "ack", "subscribers", "idle", "rate", "seconds",
];

/// Option `name` (its last value, else `default`) as a number.
fn num<T: std::str::FromStr>(named: &[(String, String)], name: &str, default: Option<&str>) -> Result<T, String> {
    let value = named.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).or(default);
    let value = value.ok_or(format!("--{name} is required"))?;
    value.parse().map_err(|_| format!("--{name}: not a valid number: {value:?}"))
}

fn parse_args(argv: &[String]) -> Result<Opts, String> {
    let (mut mode, mut named, mut switches) = (None, Vec::new(), Vec::new());
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        match arg.strip_prefix("--") {
            None if mode.is_none() => mode = Some(arg.as_str()),
            None => return Err(format!("unexpected argument {arg:?}")),
            Some(s @ ("persistent" | "backlog" | "gate" | "realtime")) => switches.push(s),
            Some(flag) => {
                let (name, value) = match flag.split_once('=') {
                    Some((n, v)) => (n, v.to_string()),
                    None => (flag, it.next().ok_or(format!("--{flag} needs a value"))?.clone()),
                };
                if !VALUED.contains(&name) {
                    return Err(format!("unknown option --{name}"));
                }
                named.push((name.to_string(), value));
            }
        }
    }
    let get = |n: &str| named.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let mode = match mode {
        Some("throughput") => Mode::Throughput,
        Some("fanout") => Mode::Fanout,
        Some("latency") => Mode::Latency,
        other => return Err(format!("scenario {other:?}: throughput, fanout or latency")),
    };
    let ip = match get("host").unwrap_or("127.0.0.1") {
        "127.0.0.1" | "localhost" => [127, 0, 0, 1].into(),
        "::1" => std::net::Ipv6Addr::LOCALHOST.into(),
        other => return Err(format!("--host {other:?}: only loopback is allowed")),
    };
    let mut headers = Vec::new();
    for (_, v) in named.iter().filter(|(k, _)| k == "header") {
        match v.split_once(':') {
            Some((n, val)) if !n.is_empty() && !v.contains(['\n', '\r', '\0']) => headers.push((n.into(), val.into())),
            _ => return Err(format!("--header {v:?}: expected name:value")),
        }
    }
    // Options of other scenarios default to 0; this one's are required.
    let (t, f, l) = (mode == Mode::Throughput, mode == Mode::Fanout, mode == Mode::Latency);
    let need = |yes: bool| if yes { None } else { Some("0") };
    let o = Opts {
        mode,
        ip,
        port: num(&named, "port", None)?,
        consumer_port: num(&named, "consumer-port", Some(get("port").unwrap_or("0")))?,
        ws: match get("transport").unwrap_or("tcp") {
            "tcp" => false,
            "ws" => true,
            other => return Err(format!("--transport {other:?}: tcp or ws")),
        },
        ws_path: get("ws-path").unwrap_or("/ws").to_string(),
        headers,
        destination: get("destination").unwrap_or("").to_string(),
        timeout: num(&named, "timeout", Some("120"))?,
        producers: num(&named, "producers", need(t))?,
        consumers: num(&named, "consumers", need(t))?,
        messages: num(&named, "messages", need(t || f))?,
        size: num(&named, "size", if l { Some("100") } else { None })?,
        ack_each: match get("ack").unwrap_or("auto") {
            "auto" => false,
            "client-individual" => true,
            other => return Err(format!("--ack {other:?}: auto or client-individual")),
        },
        persistent: switches.contains(&"persistent"),
        backlog: switches.contains(&"backlog"),
        subscribers: num(&named, "subscribers", need(f))?,
        idle: num(&named, "idle", Some("3.0"))?,
        rate: num(&named, "rate", need(l))?,
        seconds: num(&named, "seconds", need(l))?,
        gate: switches.contains(&"gate"),
        realtime: switches.contains(&"realtime"),
    };
    if t && (o.producers == 0 || o.consumers == 0) || f && o.subscribers == 0 {
        return Err("--producers, --consumers and --subscribers must be at least 1".into());
    }
    let finite = [o.timeout, o.idle, o.rate, o.seconds].iter().all(|v| v.is_finite() && *v >= 0.0);
    if !finite || o.timeout == 0.0 || l && o.rate == 0.0 {
        return Err("--timeout and --rate must be positive, --idle and --seconds not negative".into());
    }
    if o.destination.contains(['\n', '\r', ':', '\0']) || get("destination") == Some("") {
        return Err(format!("--destination {:?}: not a usable name", o.destination));
    }
    Ok(o)
}

/// Fill `buf` from /dev/urandom.
pub fn urandom(buf: &mut [u8]) {
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf));
    read.expect("/dev/urandom");
}

/// CPU time from getrusage, declared by hand (std links libc).
#[repr(C)]
struct Rusage {
    /// ru_utime and ru_stime (struct timeval: seconds, microseconds), then 14 longs.
    times: [std::os::raw::c_long; 4],
    rest: [std::os::raw::c_long; 14],
}

#[repr(C)]
struct SchedParam {
    sched_priority: i32,
}

extern "C" {
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
    fn sched_setscheduler(pid: i32, policy: i32, param: *const SchedParam) -> i32;
}

/// Move the calling thread to SCHED_FIFO (priority 10): it then wakes when
/// its timer or socket is due, not when the scheduler gets round to it.
/// Needs root or CAP_SYS_NICE. The threads that use it sleep between
/// messages, so they cannot starve the broker.
pub fn realtime() -> Result<(), String> {
    const SCHED_FIFO: i32 = 1;
    let param = SchedParam { sched_priority: 10 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid struct sched_param.
    if unsafe { sched_setscheduler(0, SCHED_FIFO, &param) } != 0 {
        return Err(format!("--realtime: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// User + system CPU seconds of the process (`thread` false: RUSAGE_SELF)
/// or of the calling thread (RUSAGE_THREAD).
pub fn cpu_seconds(thread: bool) -> f64 {
    let mut u = Rusage { times: [0; 4], rest: [0; 14] };
    // SAFETY: `u` is a writable struct rusage of the C layout.
    if unsafe { getrusage(thread as i32, &mut u) } != 0 {
        return 0.0;
    }
    let t = u.times.map(|v| v as f64);
    t[0] + t[1] / 1e6 + t[2] + t[3] / 1e6
}

/// A JSON object written by hand: "key": value pairs, values already JSON.
#[derive(Default)]
pub struct Json(Vec<String>);

impl Json {
    pub fn add(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Json {
        self.0.push(format!("\"{key}\": {value}"));
        self
    }
    pub fn finish(&self) -> String {
        format!("{{{}}}", self.0.join(", "))
    }
}

/// A float as JSON (NaN and infinities as null).
pub fn num_json(v: f64) -> String {
    if v.is_finite() { format!("{v:?}") } else { "null".into() }
}

/// A string as JSON.
pub fn quote(v: &str) -> String {
    let mut s = String::from("\"");
    for c in v.chars() {
        match c {
            '"' | '\\' => s.extend(['\\', c]),
            c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
            c => s.push(c),
        }
    }
    s + "\""
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return;
    }
    let opts = parse_args(&argv).unwrap_or_else(|e| {
        eprintln!("stompgen: {e}\n{USAGE}");
        std::process::exit(2);
    });
    let line = scenarios::run(opts);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and(out.flush());
    // Threads still blocked somewhere (after a deadline) end with the process.
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Opts, String> {
        parse_args(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn parses() {
        let o = args("throughput --port 1 --producers 2 --consumers 1 --messages 9 --size=4 --persistent --header login:a:b").unwrap();
        assert_eq!((o.producers, o.messages, o.size, o.persistent, o.ws), (2, 9, 4, true, false));
        assert_eq!(o.headers, vec![("login".into(), "a:b".into())]);
        assert!(args("fanout --port 1 --subscribers 2 --messages 9").is_err());
        assert!(args("latency --port 1 --rate 10 --seconds 1 --host 10.0.0.1").is_err());
        assert!(args("latency --port 1 --rate 10 --seconds 1 --bogus 1").is_err());
        assert_eq!(args("latency --port 1 --rate 10 --seconds 1").unwrap().size, 100);
    }

    #[test]
    fn writes_json() {
        let s = Json::default().add("a", num_json(1.5)).add("b", num_json(f64::NAN)).add("c", quote("x\"\n")).finish();
        assert_eq!(s, r#"{"a": 1.5, "b": null, "c": "x\"\u000a"}"#);
        assert!(cpu_seconds(true) >= 0.0 && cpu_seconds(false) > 0.0);
    }
}
