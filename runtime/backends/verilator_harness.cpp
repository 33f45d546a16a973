// C harness around the Verilated pNPU: holds the HBM model and runs the clock freely.
// Python drives it through the C ABI below (ctypes). The HBM model implements the protocol of
// tcloud.rtl.hbm and matches tcloud.rtl.sim.HbmModel cycle for cycle: requests are accepted one per
// cycle within the bandwidth credit, answered `latency` (+ jitter) cycles later with their id
// (instruction fetches and data each in order, the queues in turn when both are due), and a write takes effect when its acknowledgement is delivered. A request that changes or is
// withdrawn before it was taken is a protocol error.
//
// hbm_layout.h is generated at build time from the request/response layouts of tcloud.rtl.hbm
// (field offsets and widths, words per beat); nothing of them is restated here.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "Vpnpu.h"
#include "hbm_layout.h"
#include "verilated.h"
#if VM_TRACE_FST
#include "verilated_fst_c.h"
using TraceWriter = VerilatedFstC;
#elif VM_TRACE
#include "verilated_vcd_c.h"
using TraceWriter = VerilatedVcdC;
#endif


// Verilator escapes "__" in port names as "___05F".
#define HBM_REQ_VALID hbm___05Freq___05Fvalid
#define HBM_REQ_READY hbm___05Freq___05Fready
#define HBM_REQ_PAYLOAD hbm___05Freq___05Fpayload
#define HBM_RSP_VALID hbm___05Frsp___05Fvalid
#define HBM_RSP_READY hbm___05Frsp___05Fready
#define HBM_RSP_PAYLOAD hbm___05Frsp___05Fpayload

namespace {

struct Pending {
    uint64_t due;
    bool write;
    uint64_t addr;
    uint32_t count;
    uint32_t id;
    bool fetch;
    uint32_t data[kPortWords];
};

// Bit fields of a Verilated wide signal, a 32-bit word at a time (fields are at most 64 bits wide).
template <typename Wide>
uint64_t bits(const Wide& wide, unsigned low, unsigned width) {
    uint64_t value = 0;
    for (unsigned done = 0; done < width;) {
        unsigned bit = low + done, shift = bit % 32, take = std::min(32 - shift, width - done);
        uint64_t chunk = static_cast<uint64_t>(wide[bit / 32]) >> shift;
        value |= (chunk & ((uint64_t{1} << take) - 1)) << done;
        done += take;
    }
    return value;
}

template <typename Wide>
void set_bits(Wide& wide, unsigned low, unsigned width, uint64_t value) {
    for (unsigned done = 0; done < width;) {
        unsigned bit = low + done, shift = bit % 32, take = std::min(32 - shift, width - done);
        uint32_t mask = static_cast<uint32_t>(((uint64_t{1} << take) - 1) << shift);
        uint32_t chunk = static_cast<uint32_t>((value >> done) << shift);
        wide[bit / 32] = (wide[bit / 32] & ~mask) | (chunk & mask);
        done += take;
    }
}

template <typename Wide>
bool same(const Wide& a, const Wide& b) {
    for (unsigned i = 0; i < (kReqBits + 31) / 32; ++i)
        if (a[i] != b[i]) return false;
    return true;
}

struct Harness {
    std::unique_ptr<VerilatedContext> context;
    std::unique_ptr<Vpnpu> top;
    std::vector<uint8_t> hbm;
    std::deque<Pending> queues[2];  // data, fetch: each answered in order
    int presented = -1;             // the queue whose head is offered as the response
    int last = 0;                   // the queue served last: the other goes first when both are due
    uint64_t cycle = 0;
    uint32_t latency = 0;
    uint32_t jitter = 0;
    double accept_probability = 1.0;
    double bytes_per_cycle = kPortWords * 4;
    double credit = 2 * kPortWords * 4;
    bool offered = false;
    std::remove_reference_t<decltype(Vpnpu::HBM_REQ_PAYLOAD)> offered_payload;
    std::mt19937_64 rng;
    std::string error;
#if VM_TRACE
    std::unique_ptr<TraceWriter> trace;
#endif
    uint64_t time = 0;

    void dump() {
#if VM_TRACE
        if (trace) trace->dump(time);
#endif
        ++time;
    }

    bool step() {
        constexpr double kBeatBytes = kPortWords * 4;
        credit = std::min(credit + bytes_per_cycle, 2 * kBeatBytes);
        bool accept = credit >= kBeatBytes &&
                      (accept_probability >= 1.0 ||
                       std::uniform_real_distribution<double>(0.0, 1.0)(rng) < accept_probability);
        top->HBM_REQ_READY = accept;
        for (int q : {1 - last, last})
            if (presented < 0 && !queues[q].empty() && queues[q].front().due <= cycle) presented = q;
        top->HBM_RSP_VALID = presented >= 0;
        if (presented >= 0) {
            const Pending& head = queues[presented].front();
            set_bits(top->HBM_RSP_PAYLOAD, kRspIdLow, kIdBits, head.id);
            for (unsigned i = 0; i < kPortWords && !head.write; ++i) {
                uint32_t word = 0;
                if (i < head.count) std::memcpy(&word, &hbm[(head.addr + i) * 4], 4);
                set_bits(top->HBM_RSP_PAYLOAD, kRspRdataLow + 32 * i, 32, word);
            }
        }
        top->clk = 0;
        top->eval();
        dump();
        bool req_valid = top->HBM_REQ_VALID;
        bool rsp_ready = top->HBM_RSP_READY;
        const auto& payload = top->HBM_REQ_PAYLOAD;
        if (offered && (!req_valid || !same(payload, offered_payload))) {
            error = std::string("cycle ") + std::to_string(cycle) + ": the HBM request stream " +
                    (req_valid ? "changed its payload" : "dropped valid") + " before the request was taken";
            return false;
        }
        offered = req_valid && !accept;
        if (offered) offered_payload = payload;
        Pending request{};
        if (accept && req_valid) {
            request.addr = bits(payload, kReqAddrLow, kReqAddrBits);
            request.count = static_cast<uint32_t>(bits(payload, kReqCountLow, kReqCountBits));
            request.write = bits(payload, kReqWriteLow, 1) != 0;
            request.fetch = bits(payload, kReqFetchLow, 1) != 0;
            request.id = static_cast<uint32_t>(bits(payload, kReqIdLow, kIdBits));
            for (unsigned i = 0; i < kPortWords; ++i)
                request.data[i] = static_cast<uint32_t>(bits(payload, kReqWdataLow + 32 * i, 32));
        }
        top->clk = 1;
        top->eval();
        dump();
        ++cycle;
        if (presented >= 0 && rsp_ready) {
            const Pending& head = queues[presented].front();
            if (head.write) std::memcpy(&hbm[head.addr * 4], head.data, 4ull * head.count);
            queues[presented].pop_front();
            last = presented;
            presented = -1;
        }
        if (accept && req_valid) {
            if ((request.addr + request.count) * 4 > hbm.size()) {
                error = "HBM access beyond the modelled memory";
                return false;
            }
            credit -= 4.0 * request.count;
            uint64_t delay = latency;
            if (jitter) delay += std::uniform_int_distribution<uint64_t>(0, jitter)(rng);
            auto& queue = queues[request.fetch ? 1 : 0];
            request.due = std::max(cycle + delay, queue.empty() ? 0 : queue.back().due);
            queue.push_back(request);
        }
        return true;
    }
};

}  // namespace

extern "C" {

void* tc_create(uint64_t hbm_bytes, uint32_t latency, uint32_t jitter, double accept_probability,
                double bytes_per_cycle, uint64_t seed, const char* trace_path) {
    auto* h = new Harness();
    h->context = std::make_unique<VerilatedContext>();
    h->top = std::make_unique<Vpnpu>(h->context.get());
    h->hbm.assign(hbm_bytes, 0);
    h->latency = latency;
    h->jitter = jitter;
    h->accept_probability = accept_probability;
    h->bytes_per_cycle = bytes_per_cycle;
    h->rng.seed(seed);
#if VM_TRACE
    if (trace_path && *trace_path) {
        h->context->traceEverOn(true);
        h->trace = std::make_unique<TraceWriter>();
        h->top->trace(h->trace.get(), 99);
        h->trace->open(trace_path);
    }
#else
    (void)trace_path;
#endif
    h->top->clk = 1;
    h->top->rst = 0;
    h->top->csr_we = 0;
    h->top->eval();
    return h;
}

void tc_destroy(void* handle) {
    auto* h = static_cast<Harness*>(handle);
#if VM_TRACE
    if (h->trace) h->trace->close();
#endif
    h->top->final();
    delete h;
}

int tc_traced(void) { return VM_TRACE; }

const char* tc_error(void* handle) { return static_cast<Harness*>(handle)->error.c_str(); }

uint64_t tc_cycle(void* handle) { return static_cast<Harness*>(handle)->cycle; }

int tc_csr_write(void* handle, uint32_t address, uint32_t value) {
    auto* h = static_cast<Harness*>(handle);
    h->top->csr_addr = address;
    h->top->csr_wdata = value;
    h->top->csr_we = 1;
    bool ok = h->step();
    h->top->csr_we = 0;
    return ok ? 0 : -1;
}

uint32_t tc_csr_read(void* handle, uint32_t address) {
    auto* h = static_cast<Harness*>(handle);
    h->top->csr_addr = address;
    h->top->eval();
    return h->top->csr_rdata;
}

int tc_hbm_write(void* handle, uint64_t address, const uint8_t* data, uint64_t size) {
    auto* h = static_cast<Harness*>(handle);
    if (address + size > h->hbm.size()) return -1;
    std::memcpy(&h->hbm[address], data, size);
    return 0;
}

int tc_hbm_read(void* handle, uint64_t address, uint8_t* data, uint64_t size) {
    auto* h = static_cast<Harness*>(handle);
    if (address + size > h->hbm.size()) return -1;
    std::memcpy(data, &h->hbm[address], size);
    return 0;
}

// Steps `count` cycles; returns 0, or -1 on a model error (see tc_error).
int tc_run_cycles(void* handle, uint64_t count) {
    auto* h = static_cast<Harness*>(handle);
    for (uint64_t i = 0; i < count; ++i)
        if (!h->step()) return -1;
    return 0;
}

// One cycle, then cycles until `idle` or `max_cycles` more; returns 1 idle, 0 limit, -1 error.
int tc_run_until_idle(void* handle, uint64_t max_cycles) {
    auto* h = static_cast<Harness*>(handle);
    if (!h->step()) return -1;
    for (uint64_t cycles = 0; !h->top->idle; ++cycles) {
        if (cycles >= max_cycles) return 0;
        if (!h->step()) return -1;
    }
    return 1;
}

}  // extern "C"
