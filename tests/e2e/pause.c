/* The sandbox ("pause") process of the test pods: holds the pod's namespaces open and exits on
 * SIGTERM/SIGINT. As PID 1 of its PID namespace it gets no default signal actions, hence the
 * handler. */
#include <signal.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

int main(void) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    for (;;)
        pause();
}
