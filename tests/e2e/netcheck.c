/* The test pods' workload, one static binary with two roles, printing one line per event to
 * stdout (the container log):
 *   netcheck serve PORT NAME   listen on PORT; for each connection report the peer and the
 *                              original destination (SO_ORIGINAL_DST when the connection was
 *                              redirected, else the address it arrived at); reply "hello from NAME"
 *   netcheck connect IP PORT   connect (retrying for 30 s while nothing listens), send a line,
 *                              print the reply
 * Both lines name the process's UID and effective capabilities, which is the point of the demo:
 * a pod whose containers hold no capability at all still has its traffic redirected. IPv4. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static char caps[32] = "?";

static void read_caps(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    if (!f)
        return;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "CapEff: %31s", caps) == 1)
            break;
    fclose(f);
}

static const char *fmt(const struct sockaddr_in *a, char *buf, size_t len) {
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
    snprintf(buf, len, "%s:%u", ip, ntohs(a->sin_port));
    return buf;
}

static int serve(int port, const char *name) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 16)) {
        printf("%s: cannot listen on :%d: %s\n", name, port, strerror(errno));
        return 1;
    }
    printf("%s (uid %d, CapEff %s) listening on :%d\n", name, getuid(), caps, port);
    fflush(stdout);
    for (;;) {
        struct sockaddr_in peer, orig;
        socklen_t pl = sizeof peer, ol = sizeof orig;
        char pb[64], ob[64], msg[128] = "";
        int c = accept(s, (struct sockaddr *)&peer, &pl);
        if (c < 0)
            continue;
        const char *how = "redirected here";
        if (getsockopt(c, SOL_IP, SO_ORIGINAL_DST, &orig, &ol)) {
            ol = sizeof orig;
            getsockname(c, (struct sockaddr *)&orig, &ol);
            how = "not redirected";
        }
        ssize_t n = read(c, msg, sizeof msg - 1);
        if (n > 0)
            msg[strcspn(msg, "\n")] = 0;
        printf("%s: accepted %s, original destination %s (%s), request \"%s\"\n", name,
               fmt(&peer, pb, sizeof pb), fmt(&orig, ob, sizeof ob), how, msg);
        fflush(stdout);
        dprintf(c, "hello from %s\n", name);
        close(c);
    }
}

static int connect_to(const char *ip, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    char reply[128] = "", to[64];
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        printf("app: bad address %s\n", ip);
        return 1;
    }
    fmt(&a, to, sizeof to);
    for (int attempt = 0; attempt < 300; attempt++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
            dprintf(s, "GET / from the app\n");
            ssize_t n = read(s, reply, sizeof reply - 1);
            if (n > 0)
                reply[strcspn(reply, "\n")] = 0;
            printf("app (uid %d, CapEff %s) connected to %s, reply \"%s\"\n", getuid(), caps, to,
                   reply);
            fflush(stdout);
            close(s);
            return 0;
        }
        close(s);
        nanosleep(&(struct timespec){0, 100000000}, NULL);
    }
    printf("app: could not connect to %s: %s\n", to, strerror(errno));
    return 1;
}

int main(int argc, char **argv) {
    read_caps();
    if (argc == 4 && !strcmp(argv[1], "serve"))
        return serve(atoi(argv[2]), argv[3]);
    if (argc == 4 && !strcmp(argv[1], "connect"))
        return connect_to(argv[2], atoi(argv[3]));
    fprintf(stderr, "usage: netcheck serve PORT NAME | netcheck connect IP PORT\n");
    return 2;
}
