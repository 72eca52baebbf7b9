/*
 * A stand-in for libnvidia-ml.so.1, for the tests of the agent's real NVML path.
 *
 * It exports the NVML functions the agent calls through pynvml (nvidia-ml-py), with
 * NVML's signatures, return codes and units (milliwatts), and keeps its GPUs in a
 * text file named by $NVML_STUB_STATE that the tests read and edit (tests/nvmlstub/
 * __init__.py writes and parses it). The library re-reads the file whenever it
 * changed (one stat per call) and writes it back when a limit is set or an init
 * failure is used up. Read-modify-write on either side holds flock on <file>.lock.
 *
 * The file, one "key = value" a line, sections "[gpu]" and "[mig]" (a MIG device of
 * the [gpu] above it):
 *
 *   generation = 0          bump it for a driver reload: calls of the running
 *                           session fail with NVML_ERROR_UNINITIALIZED until
 *                           nvmlInit succeeds again
 *   init_failures = 0       the next N nvmlInit calls fail ...
 *   init_error = driver_not_loaded   ... with this
 *   [gpu]
 *   uuid = GPU-...          name = NVIDIA H100 80GB HBM3
 *   min_mw, max_mw, default_mw, limit_mw, idle_mw = milliwatts
 *   load_mw = 350000        what the workload would draw uncapped (absent: idle)
 *   lost = 1                every call on the GPU fails with NVML_ERROR_GPU_IS_LOST
 *   mig = unsupported | disabled | enabled
 *   pids = 101,102          compute processes
 *   fault.<op> = <kind>     that operation fails on this GPU until the line goes
 *   [mig]
 *   uuid = MIG-...          profile = 1g.10gb          pids = ...
 *
 * Operations: handle uuid name constraints default get set usage processes mig.
 * Kinds: no_permission not_supported gpu_lost uninitialized invalid_argument
 * driver_not_loaded not_found insufficient_size other, or a number.
 *
 * What NVML does that this does not: anything not listed above; a lost GPU still
 * counts in nvmlDeviceGetCount, as on a real driver.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

typedef enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_UNKNOWN = 999
} nvmlReturn_t;

typedef struct nvmlDevice_st {
    int gpu;
    int mig; /* -1: the GPU itself */
} *nvmlDevice_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

#define NVML_DEVICE_MIG_DISABLE 0
#define NVML_DEVICE_MIG_ENABLE 1

#define MAX_GPUS 64
#define MAX_MIGS 7
#define MAX_PIDS 64
#define TEXT 96

enum op { OP_HANDLE, OP_UUID, OP_NAME, OP_CONSTRAINTS, OP_DEFAULT, OP_GET, OP_SET, OP_USAGE, OP_PROCESSES,
          OP_MIG, OP_COUNT };
static const char *const OP_NAMES[OP_COUNT] = {"handle", "uuid", "name", "constraints", "default",
                                               "get", "set", "usage", "processes", "mig"};

enum mig_mode { MIG_UNSUPPORTED, MIG_DISABLED, MIG_ENABLED };
static const char *const MIG_MODES[] = {"unsupported", "disabled", "enabled"};

struct kind { const char *name; nvmlReturn_t code; };
static const struct kind KINDS[] = {
    {"no_permission", NVML_ERROR_NO_PERMISSION},   {"not_supported", NVML_ERROR_NOT_SUPPORTED},
    {"gpu_lost", NVML_ERROR_GPU_IS_LOST},          {"uninitialized", NVML_ERROR_UNINITIALIZED},
    {"invalid_argument", NVML_ERROR_INVALID_ARGUMENT}, {"driver_not_loaded", NVML_ERROR_DRIVER_NOT_LOADED},
    {"not_found", NVML_ERROR_NOT_FOUND},           {"insufficient_size", NVML_ERROR_INSUFFICIENT_SIZE},
    {"other", NVML_ERROR_UNKNOWN},
};

struct pids { unsigned int pid[MAX_PIDS]; int count; };

struct mig_state {
    char uuid[TEXT];
    char profile[TEXT];
    struct pids pids;
    nvmlReturn_t fault[OP_COUNT];
};

struct gpu_state {
    char uuid[TEXT];
    char name[TEXT];
    unsigned int min_mw, max_mw, default_mw, limit_mw, idle_mw, load_mw;
    int has_load, lost;
    enum mig_mode mig_mode;
    struct pids pids;
    nvmlReturn_t fault[OP_COUNT];
    int mig_count;
    struct mig_state migs[MAX_MIGS];
};

struct state {
    unsigned int generation, init_failures;
    nvmlReturn_t init_error;
    int gpu_count;
    struct gpu_state gpus[MAX_GPUS];
};

static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
static struct state state;
static int loaded;                 /* the state file was read at least once */
static struct stat loaded_stat;    /* what it looked like then */
static char loaded_path[4096];
static int refcount;               /* nvmlInit minus nvmlShutdown */
static unsigned int session_generation;
static struct nvmlDevice_st gpu_handles[MAX_GPUS];
static struct nvmlDevice_st mig_handles[MAX_GPUS][MAX_MIGS];

__attribute__((constructor)) static void make_handles(void) {
    for (int g = 0; g < MAX_GPUS; g++) {
        gpu_handles[g].gpu = g;
        gpu_handles[g].mig = -1;
        for (int m = 0; m < MAX_MIGS; m++) {
            mig_handles[g][m].gpu = g;
            mig_handles[g][m].mig = m;
        }
    }
}

/* ---------------------------------------------------------------- the state file */

static const char *state_path(void) { return getenv("NVML_STUB_STATE"); }

static char *trim(char *text) {
    while (*text == ' ' || *text == '\t') text++;
    char *end = text + strlen(text);
    while (end > text && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r')) end--;
    *end = '\0';
    return text;
}

static void copy_text(char *to, const char *from) {
    snprintf(to, TEXT, "%s", from);
}

static nvmlReturn_t parse_kind(const char *text) {
    for (size_t i = 0; i < sizeof KINDS / sizeof KINDS[0]; i++)
        if (strcmp(text, KINDS[i].name) == 0) return KINDS[i].code;
    char *end;
    long code = strtol(text, &end, 10);
    return (*text && !*end) ? (nvmlReturn_t)code : NVML_ERROR_UNKNOWN;
}

static const char *kind_name(nvmlReturn_t code) {
    for (size_t i = 0; i < sizeof KINDS / sizeof KINDS[0]; i++)
        if (KINDS[i].code == code) return KINDS[i].name;
    return NULL;
}

static void parse_pids(struct pids *pids, char *text) {
    pids->count = 0;
    for (char *part = strtok(text, ","); part && pids->count < MAX_PIDS; part = strtok(NULL, ","))
        if (*trim(part)) pids->pid[pids->count++] = (unsigned int)strtoul(trim(part), NULL, 10);
}

static int parse_fault(nvmlReturn_t fault[OP_COUNT], const char *key, const char *value) {
    if (strncmp(key, "fault.", 6) != 0) return 0;
    for (int op = 0; op < OP_COUNT; op++)
        if (strcmp(key + 6, OP_NAMES[op]) == 0) fault[op] = parse_kind(value);
    return 1;
}

static unsigned int milliwatts(const char *value) { return (unsigned int)strtoul(value, NULL, 10); }

/* Parse the file into *into; 0 when it cannot be read (the caller keeps what it had). */
static int parse(FILE *file, struct state *into) {
    memset(into, 0, sizeof *into);
    into->init_error = NVML_ERROR_DRIVER_NOT_LOADED;
    struct gpu_state *gpu = NULL;
    struct mig_state *mig = NULL;
    char line[8192];
    while (fgets(line, sizeof line, file)) {
        char *text = trim(line);
        if (!*text || *text == '#') continue;
        if (strcmp(text, "[gpu]") == 0) {
            if (into->gpu_count == MAX_GPUS) return 0;
            gpu = &into->gpus[into->gpu_count++];
            gpu->mig_mode = MIG_UNSUPPORTED;
            mig = NULL;
            continue;
        }
        if (strcmp(text, "[mig]") == 0) {
            if (!gpu || gpu->mig_count == MAX_MIGS) return 0;
            mig = &gpu->migs[gpu->mig_count++];
            continue;
        }
        char *equals = strchr(text, '=');
        if (!equals) return 0;
        *equals = '\0';
        char *key = trim(text), *value = trim(equals + 1);
        if (mig) {
            if (strcmp(key, "uuid") == 0) copy_text(mig->uuid, value);
            else if (strcmp(key, "profile") == 0) copy_text(mig->profile, value);
            else if (strcmp(key, "pids") == 0) parse_pids(&mig->pids, value);
            else parse_fault(mig->fault, key, value);
        } else if (gpu) {
            if (strcmp(key, "uuid") == 0) copy_text(gpu->uuid, value);
            else if (strcmp(key, "name") == 0) copy_text(gpu->name, value);
            else if (strcmp(key, "min_mw") == 0) gpu->min_mw = milliwatts(value);
            else if (strcmp(key, "max_mw") == 0) gpu->max_mw = milliwatts(value);
            else if (strcmp(key, "default_mw") == 0) gpu->default_mw = milliwatts(value);
            else if (strcmp(key, "limit_mw") == 0) gpu->limit_mw = milliwatts(value);
            else if (strcmp(key, "idle_mw") == 0) gpu->idle_mw = milliwatts(value);
            else if (strcmp(key, "load_mw") == 0) { gpu->load_mw = milliwatts(value); gpu->has_load = 1; }
            else if (strcmp(key, "lost") == 0) gpu->lost = atoi(value) != 0;
            else if (strcmp(key, "pids") == 0) parse_pids(&gpu->pids, value);
            else if (strcmp(key, "mig") == 0) {
                for (int mode = 0; mode < 3; mode++)
                    if (strcmp(value, MIG_MODES[mode]) == 0) gpu->mig_mode = (enum mig_mode)mode;
            } else parse_fault(gpu->fault, key, value);
        } else {
            if (strcmp(key, "generation") == 0) into->generation = (unsigned int)strtoul(value, NULL, 10);
            else if (strcmp(key, "init_failures") == 0) into->init_failures = (unsigned int)strtoul(value, NULL, 10);
            else if (strcmp(key, "init_error") == 0) into->init_error = parse_kind(value);
        }
    }
    return 1;
}

static int same_file(const struct stat *a, const struct stat *b) {
    return a->st_ino == b->st_ino && a->st_size == b->st_size && a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
           a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* Take the file's content if it changed since it was last read. */
static void refresh(void) {
    const char *path = state_path();
    struct stat now;
    if (!path || stat(path, &now) != 0) return;
    if (loaded && strcmp(path, loaded_path) == 0 && same_file(&now, &loaded_stat)) return;
    FILE *file = fopen(path, "r");
    if (!file) return;
    static struct state fresh;
    int ok = parse(file, &fresh);
    fclose(file);
    if (!ok) return;
    state = fresh;
    loaded = 1;
    loaded_stat = now;
    snprintf(loaded_path, sizeof loaded_path, "%s", path);
}

static void write_pids(FILE *file, const struct pids *pids) {
    fprintf(file, "pids = ");
    for (int i = 0; i < pids->count; i++) fprintf(file, "%s%u", i ? "," : "", pids->pid[i]);
    fprintf(file, "\n");
}

static void write_faults(FILE *file, const nvmlReturn_t fault[OP_COUNT]) {
    for (int op = 0; op < OP_COUNT; op++) {
        if (fault[op] == NVML_SUCCESS) continue;
        const char *name = kind_name(fault[op]);
        if (name) fprintf(file, "fault.%s = %s\n", OP_NAMES[op], name);
        else fprintf(file, "fault.%s = %d\n", OP_NAMES[op], (int)fault[op]);
    }
}

/* Write the state back (temporary file, then rename), so the tests see what the GPUs hold. */
static void save(void) {
    const char *path = state_path();
    if (!path) return;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid());
    FILE *file = fopen(tmp, "w");
    if (!file) return;
    fprintf(file, "# NVML stand-in state (tests/nvmlstub): read and written by the tests and the library\n");
    fprintf(file, "generation = %u\ninit_failures = %u\n", state.generation, state.init_failures);
    const char *error = kind_name(state.init_error);
    if (error) fprintf(file, "init_error = %s\n", error);
    else fprintf(file, "init_error = %d\n", (int)state.init_error);
    for (int g = 0; g < state.gpu_count; g++) {
        const struct gpu_state *gpu = &state.gpus[g];
        fprintf(file, "\n[gpu]\nuuid = %s\nname = %s\n", gpu->uuid, gpu->name);
        fprintf(file, "min_mw = %u\nmax_mw = %u\ndefault_mw = %u\nlimit_mw = %u\nidle_mw = %u\n", gpu->min_mw,
                gpu->max_mw, gpu->default_mw, gpu->limit_mw, gpu->idle_mw);
        if (gpu->has_load) fprintf(file, "load_mw = %u\n", gpu->load_mw);
        fprintf(file, "lost = %d\nmig = %s\n", gpu->lost, MIG_MODES[gpu->mig_mode]);
        write_pids(file, &gpu->pids);
        write_faults(file, gpu->fault);
        for (int m = 0; m < gpu->mig_count; m++) {
            const struct mig_state *mig = &gpu->migs[m];
            fprintf(file, "[mig]\nuuid = %s\nprofile = %s\n", mig->uuid, mig->profile);
            write_pids(file, &mig->pids);
            write_faults(file, mig->fault);
        }
    }
    if (fclose(file) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return;
    }
    struct stat now;
    if (stat(path, &now) == 0) loaded_stat = now;
}

/* flock on <file>.lock around a read-modify-write, so no edit of the tests is lost. */
static int lock_file(void) {
    const char *path = state_path();
    if (!path) return -1;
    char lock[4200];
    snprintf(lock, sizeof lock, "%s.lock", path);
    int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0 && flock(fd, LOCK_EX) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void unlock_file(int fd) {
    if (fd >= 0) close(fd); /* closing releases the lock */
}

/* ---------------------------------------------------------------- calls */

#define LOCKED(body)                       \
    do {                                   \
        pthread_mutex_lock(&mutex);        \
        nvmlReturn_t locked_result = body; \
        pthread_mutex_unlock(&mutex);      \
        return locked_result;              \
    } while (0)

/* The session is open and the driver it opened is still the one loaded. */
static nvmlReturn_t ready(void) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    refresh();
    return state.generation == session_generation ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
}

/* The GPU or MIG device behind a handle, and the fault set up for the operation on it. */
static nvmlReturn_t resolve(nvmlDevice_t device, enum op op, struct gpu_state **gpu, struct mig_state **mig) {
    nvmlReturn_t result = ready();
    if (result != NVML_SUCCESS) return result;
    int in_gpus = device >= &gpu_handles[0] && device < &gpu_handles[MAX_GPUS];
    int in_migs = device >= &mig_handles[0][0] && device < &mig_handles[MAX_GPUS - 1][MAX_MIGS];
    if (!device || !(in_gpus || in_migs) || device->gpu >= state.gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    *gpu = &state.gpus[device->gpu];
    *mig = NULL;
    if (device->mig >= 0) {
        if ((*gpu)->mig_mode != MIG_ENABLED || device->mig >= (*gpu)->mig_count) return NVML_ERROR_INVALID_ARGUMENT;
        *mig = &(*gpu)->migs[device->mig];
    }
    if ((*gpu)->lost) return NVML_ERROR_GPU_IS_LOST;
    if (*mig && (*mig)->fault[op] != NVML_SUCCESS) return (*mig)->fault[op];
    /* A fault on a GPU's MIG operations also fails resolving its MIG devices. */
    if (!*mig || op == OP_MIG) return (*gpu)->fault[op];
    return NVML_SUCCESS;
}

static nvmlReturn_t init_locked(void) {
    int fd = lock_file();
    refresh();
    nvmlReturn_t result = NVML_SUCCESS;
    if (!loaded) {
        result = NVML_ERROR_DRIVER_NOT_LOADED;
    } else if (state.init_failures > 0) {
        state.init_failures--;
        save();
        result = state.init_error;
    } else {
        refcount++;
        session_generation = state.generation;
    }
    unlock_file(fd);
    return result;
}

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    LOCKED(init_locked());
}

EXPORT nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

static nvmlReturn_t shutdown_locked(void) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    refcount--;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlShutdown(void) { LOCKED(shutdown_locked()); }

EXPORT const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t count_locked(unsigned int *count) {
    nvmlReturn_t result = ready();
    if (result != NVML_SUCCESS) return result;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned int)state.gpu_count;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) { LOCKED(count_locked(count)); }

static nvmlReturn_t handle_by_index_locked(unsigned int index, nvmlDevice_t *device) {
    nvmlReturn_t result = ready();
    if (result != NVML_SUCCESS) return result;
    if (!device || index >= (unsigned int)state.gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    struct gpu_state *gpu = &state.gpus[index];
    if (gpu->lost) return NVML_ERROR_GPU_IS_LOST;
    if (gpu->fault[OP_HANDLE] != NVML_SUCCESS) return gpu->fault[OP_HANDLE];
    *device = &gpu_handles[index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    LOCKED(handle_by_index_locked(index, device));
}

static nvmlReturn_t handle_by_uuid_locked(const char *uuid, nvmlDevice_t *device) {
    nvmlReturn_t result = ready();
    if (result != NVML_SUCCESS) return result;
    if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
    for (int g = 0; g < state.gpu_count; g++) {
        struct gpu_state *gpu = &state.gpus[g];
        if (strcmp(gpu->uuid, uuid) == 0) {
            if (gpu->lost) return NVML_ERROR_GPU_IS_LOST;
            *device = &gpu_handles[g];
            return NVML_SUCCESS;
        }
        for (int m = 0; gpu->mig_mode == MIG_ENABLED && m < gpu->mig_count; m++) {
            if (strcmp(gpu->migs[m].uuid, uuid) != 0) continue;
            if (gpu->lost) return NVML_ERROR_GPU_IS_LOST;
            if (gpu->fault[OP_MIG] != NVML_SUCCESS) return gpu->fault[OP_MIG];
            *device = &mig_handles[g][m];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    LOCKED(handle_by_uuid_locked(uuid, device));
}

static nvmlReturn_t copy_out(const char *text, char *buffer, unsigned int length) {
    if (!buffer) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buffer, text, strlen(text) + 1);
    return NVML_SUCCESS;
}

static nvmlReturn_t uuid_locked(nvmlDevice_t device, char *uuid, unsigned int length) {
    struct gpu_state *gpu;
    struct mig_state *mig;
    nvmlReturn_t result = resolve(device, OP_UUID, &gpu, &mig);
    if (result != NVML_SUCCESS) return result;
    return copy_out(mig ? mig->uuid : gpu->uuid, uuid, length);
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    LOCKED(uuid_locked(device, uuid, length));
}

static nvmlReturn_t name_locked(nvmlDevice_t device, char *name, unsigned int length) {
    struct gpu_state *gpu;
    struct mig_state *mig;
    nvmlReturn_t result = resolve(device, OP_NAME, &gpu, &mig);
    if (result != NVML_SUCCESS) return result;
    char text[2 * TEXT + 8];
    if (mig) snprintf(text, sizeof text, "%s MIG %s", gpu->name, mig->profile);
    else snprintf(text, sizeof text, "%s", gpu->name);
    return copy_out(text, name, length);
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    LOCKED(name_locked(device, name, length));
}

/* Power is the whole GPU's: its MIG devices have no power calls of their own. */
static nvmlReturn_t power_device(nvmlDevice_t device, enum op op, struct gpu_state **gpu) {
    struct mig_state *mig;
    nvmlReturn_t result = resolve(device, op, gpu, &mig);
    if (result != NVML_SUCCESS) return result;
    return mig ? NVML_ERROR_NOT_SUPPORTED : NVML_SUCCESS;
}

static nvmlReturn_t constraints_locked(nvmlDevice_t device, unsigned int *min_mw, unsigned int *max_mw) {
    struct gpu_state *gpu;
    nvmlReturn_t result = power_device(device, OP_CONSTRAINTS, &gpu);
    if (result != NVML_SUCCESS) return result;
    if (!min_mw || !max_mw) return NVML_ERROR_INVALID_ARGUMENT;
    *min_mw = gpu->min_mw;
    *max_mw = gpu->max_mw;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementLimitConstraints(nvmlDevice_t device, unsigned int *min_mw,
                                                                 unsigned int *max_mw) {
    LOCKED(constraints_locked(device, min_mw, max_mw));
}

static nvmlReturn_t milliwatts_locked(nvmlDevice_t device, enum op op, unsigned int *value) {
    struct gpu_state *gpu;
    nvmlReturn_t result = power_device(device, op, &gpu);
    if (result != NVML_SUCCESS) return result;
    if (!value) return NVML_ERROR_INVALID_ARGUMENT;
    if (op == OP_DEFAULT) *value = gpu->default_mw;
    else if (op == OP_GET) *value = gpu->limit_mw;
    else *value = gpu->has_load ? (gpu->load_mw < gpu->limit_mw ? gpu->load_mw : gpu->limit_mw) : gpu->idle_mw;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementDefaultLimit(nvmlDevice_t device, unsigned int *limit) {
    LOCKED(milliwatts_locked(device, OP_DEFAULT, limit));
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int *limit) {
    LOCKED(milliwatts_locked(device, OP_GET, limit));
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    LOCKED(milliwatts_locked(device, OP_USAGE, power));
}

static nvmlReturn_t set_limit_locked(nvmlDevice_t device, unsigned int limit) {
    int fd = lock_file();
    struct gpu_state *gpu;
    nvmlReturn_t result = power_device(device, OP_SET, &gpu);
    if (result == NVML_SUCCESS && (limit < gpu->min_mw || limit > gpu->max_mw)) result = NVML_ERROR_INVALID_ARGUMENT;
    if (result == NVML_SUCCESS) {
        gpu->limit_mw = limit;
        save();
    }
    unlock_file(fd);
    return result;
}

EXPORT nvmlReturn_t nvmlDeviceSetPowerManagementLimit(nvmlDevice_t device, unsigned int limit) {
    LOCKED(set_limit_locked(device, limit));
}

static void add_processes(nvmlProcessInfo_t *infos, unsigned int *filled, unsigned int room, const struct pids *pids,
                          unsigned int gpu_instance) {
    for (int i = 0; i < pids->count; i++, (*filled)++) {
        if (*filled >= room) continue;
        infos[*filled].pid = pids->pid[i];
        infos[*filled].usedGpuMemory = 1ULL << 30;
        infos[*filled].gpuInstanceId = gpu_instance;
        infos[*filled].computeInstanceId = gpu_instance == 0xFFFFFFFFu ? 0xFFFFFFFFu : 0;
    }
}

/* A GPU in MIG mode answers for all its MIG devices (the aggregate NVML gives a privileged caller). */
static nvmlReturn_t processes_locked(nvmlDevice_t device, unsigned int *count, nvmlProcessInfo_t *infos) {
    struct gpu_state *gpu;
    struct mig_state *mig;
    nvmlReturn_t result = resolve(device, OP_PROCESSES, &gpu, &mig);
    if (result != NVML_SUCCESS) return result;
    if (!count || (*count > 0 && !infos)) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int room = *count, filled = 0;
    if (mig) {
        add_processes(infos, &filled, room, &mig->pids, (unsigned int)device->mig + 1);
    } else {
        add_processes(infos, &filled, room, &gpu->pids, gpu->mig_mode == MIG_ENABLED ? 0 : 0xFFFFFFFFu);
        for (int m = 0; gpu->mig_mode == MIG_ENABLED && m < gpu->mig_count; m++)
            add_processes(infos, &filled, room, &gpu->migs[m].pids, (unsigned int)m + 1);
    }
    *count = filled;
    return filled > room ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                            nvmlProcessInfo_t *infos) {
    LOCKED(processes_locked(device, count, infos));
}

/* ---------------------------------------------------------------- MIG */

static nvmlReturn_t parent_gpu(nvmlDevice_t device, struct gpu_state **gpu) {
    struct mig_state *mig;
    nvmlReturn_t result = resolve(device, OP_MIG, gpu, &mig);
    if (result != NVML_SUCCESS) return result;
    if (mig) return NVML_ERROR_INVALID_ARGUMENT; /* a MIG device has no MIG devices */
    return (*gpu)->mig_mode == MIG_UNSUPPORTED ? NVML_ERROR_NOT_SUPPORTED : NVML_SUCCESS;
}

static nvmlReturn_t mig_mode_locked(nvmlDevice_t device, unsigned int *current, unsigned int *pending) {
    struct gpu_state *gpu;
    nvmlReturn_t result = parent_gpu(device, &gpu);
    if (result != NVML_SUCCESS) return result;
    if (!current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
    *current = *pending = gpu->mig_mode == MIG_ENABLED ? NVML_DEVICE_MIG_ENABLE : NVML_DEVICE_MIG_DISABLE;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current, unsigned int *pending) {
    LOCKED(mig_mode_locked(device, current, pending));
}

static nvmlReturn_t max_mig_locked(nvmlDevice_t device, unsigned int *count) {
    struct gpu_state *gpu;
    nvmlReturn_t result = parent_gpu(device, &gpu);
    if (result == NVML_ERROR_NOT_SUPPORTED) result = NVML_SUCCESS, gpu = NULL; /* zero: no MIG */
    if (result != NVML_SUCCESS) return result;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = gpu && gpu->mig_mode == MIG_ENABLED ? MAX_MIGS : 0;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    LOCKED(max_mig_locked(device, count));
}

static nvmlReturn_t mig_handle_locked(nvmlDevice_t device, unsigned int index, nvmlDevice_t *mig_device) {
    struct gpu_state *gpu;
    nvmlReturn_t result = parent_gpu(device, &gpu);
    if (result != NVML_SUCCESS) return result;
    if (gpu->mig_mode != MIG_ENABLED) return NVML_ERROR_NOT_SUPPORTED;
    if (!mig_device || index >= MAX_MIGS) return NVML_ERROR_INVALID_ARGUMENT;
    if (index >= (unsigned int)gpu->mig_count) return NVML_ERROR_NOT_FOUND;
    *mig_device = &mig_handles[device->gpu][index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                        nvmlDevice_t *mig_device) {
    LOCKED(mig_handle_locked(device, index, mig_device));
}

static nvmlReturn_t is_mig_locked(nvmlDevice_t device, unsigned int *is_mig) {
    struct gpu_state *gpu;
    struct mig_state *mig;
    nvmlReturn_t result = resolve(device, OP_HANDLE, &gpu, &mig);
    if (result != NVML_SUCCESS) return result;
    if (!is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    *is_mig = mig != NULL;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *is_mig) {
    LOCKED(is_mig_locked(device, is_mig));
}

static nvmlReturn_t parent_handle_locked(nvmlDevice_t mig_device, nvmlDevice_t *device) {
    struct gpu_state *gpu;
    struct mig_state *mig;
    nvmlReturn_t result = resolve(mig_device, OP_MIG, &gpu, &mig);
    if (result != NVML_SUCCESS) return result;
    if (!mig || !device) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &gpu_handles[mig_device->gpu];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t mig_device, nvmlDevice_t *device) {
    LOCKED(parent_handle_locked(mig_device, device));
}
