/* shop: the small HTTP service the example pipelines build, package and
 * deploy (and the tests deploy too). HTTP/1.1 with keep-alive, each response
 * written in one write (no Nagle stall on reused connections), and a graceful
 * stop: on SIGTERM it stops accepting, finishes the requests in flight, closes
 * idle connections and exits.
 *
 *   GET /health   200 "ok"             (500 when HEALTH=fail)
 *   GET /version  the version          ($VERSION, or -DVERSION)
 *   GET /         "shop <version>"     (500 for ERROR_PERCENT % of requests)
 *
 * PORT is the port to listen on (127.0.0.1 unless BIND is set), CRASH=1
 * makes it exit at once (an instance that dies at start), START_DELAY_MS
 * makes it slow to start listening, EXIT_AFTER_MS makes it exit that long
 * after it started (an instance that dies once it serves). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef VERSION
#define VERSION "dev"
#endif

static atomic_int stopping = 0;
static atomic_int active = 0;
static atomic_ulong served = 0;
static const char *version = VERSION;
static int error_percent = 0;
static int health_fails = 0;

static void on_term(int sig) { (void)sig; stopping = 1; }

/* Writes the whole buffer (one write call in practice). */
static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int respond(int fd, int status, const char *body, int keep) {
    char out[1024];
    const char *reason = status == 200 ? "OK" : status == 404 ? "Not Found" : "Internal Server Error";
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: %s\r\nX-Version: %s\r\n\r\n%s",
                     status, reason, strlen(body), keep ? "keep-alive" : "close", version, body);
    return write_all(fd, out, (size_t)n);
}

static void *serve(void *arg) {
    int fd = (int)(long)arg;
    char buf[8192];
    size_t have = 0;
    int keep = 1;
    while (keep) {
        char *end;
        /* Wait for a whole request head; while stopping, an idle connection is closed. */
        while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {
            if (stopping && have == 0) goto done;
            struct pollfd p = {fd, POLLIN, 0};
            int r = poll(&p, 1, 100);
            if (r < 0 && errno != EINTR) goto done;
            if (r <= 0) continue;
            ssize_t n = recv(fd, buf + have, sizeof buf - have, 0);
            if (n <= 0) goto done;
            have += (size_t)n;
            if (have == sizeof buf) goto done;
        }
        size_t head = (size_t)(end - buf) + 4;
        buf[head - 1] = 0;
        char method[8] = {0}, path[256] = {0};
        sscanf(buf, "%7s %255s", method, path);
        keep = !stopping && strcasestr(buf, "connection: close") == NULL && strstr(buf, "HTTP/1.0") == NULL;
        unsigned long n = ++served;
        char body[300];
        int status = 200;
        if (strcmp(path, "/health") == 0) {
            if (health_fails) { status = 500; snprintf(body, sizeof body, "unhealthy\n"); }
            else snprintf(body, sizeof body, "ok\n");
        } else if (strcmp(path, "/version") == 0) {
            snprintf(body, sizeof body, "%s\n", version);
        } else if (strcmp(path, "/") == 0) {
            if (error_percent > 0 && (long)(n % 100) < error_percent) { status = 500; snprintf(body, sizeof body, "broken %s\n", version); }
            else snprintf(body, sizeof body, "shop %s\n", version);
        } else {
            status = 404;
            snprintf(body, sizeof body, "no %s\n", path);
        }
        if (respond(fd, status, body, keep) < 0) goto done;
        memmove(buf, buf + head, have - head);
        have -= head;
    }
done:
    close(fd);
    active--;
    return NULL;
}

/* Exits, without a word to anyone, once the time in arg (ms) is over. */
static void *exit_later(void *arg) {
    long ms = (long)arg;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    fprintf(stderr, "shop %s: exiting, as EXIT_AFTER_MS asks\n", version);
    _exit(4);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("shop %s\n", VERSION);
        return 0;
    }
    if (getenv("VERSION") && *getenv("VERSION")) version = getenv("VERSION");
    if (getenv("ERROR_PERCENT")) error_percent = atoi(getenv("ERROR_PERCENT"));
    if (getenv("HEALTH") && strcmp(getenv("HEALTH"), "fail") == 0) health_fails = 1;
    if (getenv("CRASH") && strcmp(getenv("CRASH"), "1") == 0) {
        fprintf(stderr, "shop %s: crashing at start, as CRASH=1 asks\n", version);
        return 3;
    }
    if (getenv("START_DELAY_MS")) {
        long ms = atol(getenv("START_DELAY_MS"));
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (getenv("EXIT_AFTER_MS") && atol(getenv("EXIT_AFTER_MS")) > 0) {
        pthread_t t;
        pthread_create(&t, NULL, exit_later, (void *)atol(getenv("EXIT_AFTER_MS")));
        pthread_detach(t);
    }
    int port = getenv("PORT") ? atoi(getenv("PORT")) : 8080;
    const char *bind_to = getenv("BIND") ? getenv("BIND") : "127.0.0.1";

    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    inet_pton(AF_INET, bind_to, &addr.sin_addr);
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 512) < 0) {
        fprintf(stderr, "shop %s: cannot listen on %s:%d: %s\n", version, bind_to, port, strerror(errno));
        return 1;
    }
    fprintf(stderr, "shop %s listening on %s:%d\n", version, bind_to, port);
    while (!stopping) {
        struct pollfd p = {ls, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0) continue;
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) continue;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        active++;
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, serve, (void *)(long)fd) != 0) {
            close(fd);
            active--;
        }
        pthread_attr_destroy(&attr);
    }
    /* Graceful stop: no new connections; requests in flight finish; idle ones close. */
    close(ls);
    for (int i = 0; i < 100 && active > 0; i++) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "shop %s stopped after %lu requests\n", version, (unsigned long)served);
    return 0;
}
