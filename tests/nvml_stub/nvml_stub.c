/*
 * A stand-in for the NVIDIA driver's libnvidia-ml.so.1, for tests.
 *
 * Build:  gcc -shared -fPIC -Wl,-soname,libnvidia-ml.so.1 -o DIR/libnvidia-ml.so.1 nvml_stub.c
 * Use:    run the process under test with LD_LIBRARY_PATH=DIR (set before it starts: the loader
 *         reads it once) and TK_NVML_STUB_FILE=<answers file>.
 *
 * Every nvmlInit* call re-reads the answers file, so a test can change what the "driver" says
 * between polls of one long-running process. The file is `key=value` lines ('#' starts a comment):
 *
 *   init_rc=0            return code of nvmlInit* (9 DriverNotLoaded, 18 LibRmVersionMismatch, ...)
 *   driver=551.86        nvmlSystemGetDriverVersion
 *   driver_rc=0
 *   cuda=12040           nvmlSystemGetCudaDriverVersion[_v2]
 *   cuda_rc=0            (13 = FunctionNotFound, as an old driver without the call)
 *   count_rc=0           nvmlDeviceGetCount[_v2]
 *   shutdown_rc=0        nvmlShutdown
 *   gpu=NAME|UUID[|name_rc=N][|uuid_rc=N][|handle_rc=N][|cc=M.m]   one line per GPU, in index order
 *                        (cc: nvmlDeviceGetCudaComputeCapability; without it the call answers
 *                        NVML_ERROR_NOT_SUPPORTED)
 *
 * A missing or unreadable file makes nvmlInit* return NVML_ERROR_UNKNOWN (999).
 * If TK_NVML_STUB_LOG names a file, each init and shutdown appends "init RC" / "shutdown RC" to it.
 * Calls before a successful init (or after the last shutdown) return NVML_ERROR_UNINITIALIZED,
 * as the real library does; init/shutdown are reference counted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef struct stub_gpu *nvmlDevice_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_UNKNOWN 999

#define MAX_GPUS 16
#define MAX_TEXT 256

struct stub_gpu {
    char name[MAX_TEXT];
    char uuid[MAX_TEXT];
    int name_rc, uuid_rc, handle_rc;
    int cc_major, cc_minor;  /* 0.0: not answered */
};

static struct {
    int init_rc, driver_rc, cuda_rc, count_rc, shutdown_rc;
    char driver[MAX_TEXT];
    int cuda;
    unsigned gpu_count;
    struct stub_gpu gpus[MAX_GPUS];
} cfg;

static int refcount = 0;

static int log_call(const char *what, int rc) {
    const char *path = getenv("TK_NVML_STUB_LOG");
    if (path) {
        FILE *f = fopen(path, "a");
        if (f) {
            fprintf(f, "%s %d\n", what, rc);
            fclose(f);
        }
    }
    return rc;
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = 0;
    return s;
}

static void copy_text(char *dst, const char *src) {
    snprintf(dst, MAX_TEXT, "%s", src);
}

static void parse_gpu(char *value) {
    if (cfg.gpu_count >= MAX_GPUS) return;
    struct stub_gpu *g = &cfg.gpus[cfg.gpu_count++];
    memset(g, 0, sizeof *g);
    char *field = value, *bar;
    int i = 0;
    for (;;) {
        bar = strchr(field, '|');
        if (bar) *bar = 0;
        char *f = trim(field);
        if (i == 0) copy_text(g->name, f);
        else if (i == 1) copy_text(g->uuid, f);
        else if (strncmp(f, "name_rc=", 8) == 0) g->name_rc = atoi(f + 8);
        else if (strncmp(f, "uuid_rc=", 8) == 0) g->uuid_rc = atoi(f + 8);
        else if (strncmp(f, "handle_rc=", 10) == 0) g->handle_rc = atoi(f + 10);
        else if (strncmp(f, "cc=", 3) == 0) {
            g->cc_major = atoi(f + 3);
            const char *dot = strchr(f + 3, '.');
            g->cc_minor = dot ? atoi(dot + 1) : 0;
        }
        i++;
        if (!bar) break;
        field = bar + 1;
    }
}

/* Returns 0 when the answers file was read. */
static int load_config(void) {
    memset(&cfg, 0, sizeof cfg);
    const char *path = getenv("TK_NVML_STUB_FILE");
    if (!path) return -1;
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        char *s = trim(line);
        if (!*s || *s == '#') continue;
        char *eq = strchr(s, '=');
        if (!eq) continue;
        *eq = 0;
        char *key = trim(s), *value = trim(eq + 1);
        if (!strcmp(key, "init_rc")) cfg.init_rc = atoi(value);
        else if (!strcmp(key, "driver")) copy_text(cfg.driver, value);
        else if (!strcmp(key, "driver_rc")) cfg.driver_rc = atoi(value);
        else if (!strcmp(key, "cuda")) cfg.cuda = atoi(value);
        else if (!strcmp(key, "cuda_rc")) cfg.cuda_rc = atoi(value);
        else if (!strcmp(key, "count_rc")) cfg.count_rc = atoi(value);
        else if (!strcmp(key, "shutdown_rc")) cfg.shutdown_rc = atoi(value);
        else if (!strcmp(key, "gpu")) parse_gpu(value);
    }
    fclose(f);
    return 0;
}

static nvmlReturn_t copy_out(const char *text, char *buf, unsigned int length) {
    if (!buf) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buf, text, strlen(text) + 1);
    return NVML_SUCCESS;
}

/* ---- init / shutdown ---- */

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    if (load_config() != 0) return log_call("init", NVML_ERROR_UNKNOWN);
    if (cfg.init_rc != NVML_SUCCESS) return log_call("init", cfg.init_rc);
    refcount++;
    return log_call("init", NVML_SUCCESS);
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (refcount == 0) return log_call("shutdown", NVML_ERROR_UNINITIALIZED);
    refcount--;
    return log_call("shutdown", cfg.shutdown_rc);
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 11: return "Interrupt Request Issue";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 14: return "Corrupted infoROM";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 17: return "The operating system has blocked the request.";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    case 19: return "In use by another client";
    case 20: return "Insufficient Memory";
    case 21: return "No data";
    case 22: return "The requested vgpu operation is not available on target device, because ECC is enabled";
    case 23: return "Ran out of critical resources, other than memory";
    case 24: return "The requested frequency is not supported";
    case 25: return "Argument version mismatch";
    case 26: return "Deprecated";
    case 27: return "Not ready";
    case 28: return "GPU not found";
    case 29: return "Invalid state";
    case 30: return "Reset type not supported";
    case 999: return "Unknown Error";
    default: return "Unknown NVML error code (tk stub)";
    }
}

/* ---- system ---- */

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (cfg.driver_rc) return cfg.driver_rc;
    return copy_out(cfg.driver, version, length);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion) {
    if (!cudaDriverVersion) return NVML_ERROR_INVALID_ARGUMENT;
    if (cfg.cuda_rc) return cfg.cuda_rc;
    *cudaDriverVersion = cfg.cuda;  /* the real call works without init as well */
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion) {
    return nvmlSystemGetCudaDriverVersion_v2(cudaDriverVersion);
}

/* ---- devices ---- */

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!deviceCount) return NVML_ERROR_INVALID_ARGUMENT;
    if (cfg.count_rc) return cfg.count_rc;
    *deviceCount = cfg.gpu_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount) { return nvmlDeviceGetCount_v2(deviceCount); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= cfg.gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    if (cfg.gpus[index].handle_rc) return cfg.gpus[index].handle_rc;
    *device = &cfg.gpus[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

static int valid_handle(nvmlDevice_t device) {
    return device >= &cfg.gpus[0] && device < &cfg.gpus[cfg.gpu_count];
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!valid_handle(device)) return NVML_ERROR_INVALID_ARGUMENT;
    if (device->name_rc) return device->name_rc;
    return copy_out(device->name, name, length);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!valid_handle(device)) return NVML_ERROR_INVALID_ARGUMENT;
    if (device->uuid_rc) return device->uuid_rc;
    return copy_out(device->uuid, uuid, length);
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!valid_handle(device) || !major || !minor) return NVML_ERROR_INVALID_ARGUMENT;
    if (!device->cc_major) return 3; /* NVML_ERROR_NOT_SUPPORTED */
    *major = device->cc_major;
    *minor = device->cc_minor;
    return NVML_SUCCESS;
}
