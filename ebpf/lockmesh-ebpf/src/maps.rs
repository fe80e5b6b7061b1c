//! Maps shared by the programs. Sizes here are defaults; the agent resizes the ring buffer and
//! the tables at load time from its flags.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use lockmesh_common::{
    CaptureKey, ConnKey, EnrolledPod, ExemptKey, FlowStart, OrigDst, PodIface, PortKey, SourceKey, StrictKey,
    counter,
};

/// Enrolled pods by network-namespace cookie. The agent owns it; programs only read it.
#[map(name = "ENROLLED")]
pub static ENROLLED: HashMap<u64, EnrolledPod> = HashMap::with_max_entries(4096, 0);

/// Connection open/close events for the agent.
#[map(name = "FLOW_EVENTS")]
pub static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// `rcv_nxt` of sockets when they entered FIN_WAIT2, by socket cookie: tells at close whether
/// the peer's FIN arrived afterwards (the kernel counts it in `bytes_received`). Deleted at
/// close.
#[map(name = "FIN_WAIT2_RCV_NXT")]
pub static FIN_WAIT2_RCV_NXT: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65_536, 0);

/// When each tracked connection was established and from which side, by socket cookie: its
/// CLOSE event carries them, so the record is whole even when a restarted agent missed the OPEN.
/// LRU: a socket whose close was never seen ages out.
#[map(name = "FLOW_STARTS")]
pub static FLOW_STARTS: LruHashMap<u64, FlowStart> = LruHashMap::with_max_entries(65_536, 0);

/// Which destinations each policy class of pods has captured into the engine.
#[map(name = "CAPTURE")]
pub static CAPTURE: HashMap<CaptureKey, u32> = HashMap::with_max_entries(65_536, 0);

/// Original destination of captured connections, by socket cookie: for `getpeername()` and
/// for sock_ops to hand over to the engine. Deleted when the socket closes (sock_ops); the LRU
/// only ages out entries of connects that never got established.
#[map(name = "ORIG_DST")]
pub static ORIG_DST: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(65_536, 0);

/// Original destination of captured connections by (pod netns, app port), for the engine's
/// `accept()`; the engine deletes each entry it reads. An entry the LRU evicted before the
/// engine accepted shows as `lockmesh_captured_without_destination_total`.
#[map(name = "ORIG_DST_BY_PORT")]
pub static ORIG_DST_BY_PORT: LruHashMap<PortKey, OrigDst> = LruHashMap::with_max_entries(65_536, 0);

/// STRICT ports of enrolled pods (see `lockmesh_common::strict`).
#[map(name = "STRICT")]
pub static STRICT: HashMap<StrictKey, u32> = HashMap::with_max_entries(65_536, 0);

/// Sources allowed to reach STRICT ports in plaintext (pods' probe ports from their node,
/// `--strict-exempt`).
#[map(name = "STRICT_EXEMPT")]
pub static STRICT_EXEMPT: HashMap<ExemptKey, u32> = HashMap::with_max_entries(4096, 0);

/// Addresses each enrolled pod may send from, by its host-side interface (anti-spoofing).
#[map(name = "POD_SOURCES")]
pub static POD_SOURCES: HashMap<SourceKey, u32> = HashMap::with_max_entries(8192, 0);

/// Connections enrolled pods opened (sock_ops at connect; the agent adds those that were open
/// before the pod was enrolled), whose replies the STRICT guard lets in. Deleted at close; LRU
/// so that a close never seen cannot fill it.
#[map(name = "POD_INITIATED")]
pub static POD_INITIATED: LruHashMap<ConnKey, u32> = LruHashMap::with_max_entries(65_536, 0);

/// Each guarded pod by its host-side interface: the STRICT guard finds the pod's policy for IPv6
/// packets (whose addresses the agent does not know) through it, the egress guard its class.
#[map(name = "POD_IFACES")]
pub static POD_IFACES: HashMap<u32, PodIface> = HashMap::with_max_entries(8192, 0);

/// Per-CPU counters, indexed by `lockmesh_common::counter`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs do not sleep or migrate while running.
        unsafe { *value += 1 };
    }
}

/// Looks up an enrolled pod by network-namespace cookie.
#[inline(always)]
pub fn enrolled(netns_cookie: u64) -> Option<EnrolledPod> {
    // SAFETY: the value is plain data copied out at once; a concurrent update can only make
    // us see an older or newer pod record, never an invalid one.
    unsafe { ENROLLED.get(&netns_cookie).copied() }
}
