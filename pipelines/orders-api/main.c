/* orders-api: totals the orders read from stdin, one "item quantity cents" per line.
 * The example service that pipelines/orders-api.kdl builds, tests and packages. */
#include <stdio.h>
#include <string.h>

#ifndef VERSION
#define VERSION "dev"
#endif

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("orders-api %s\n", VERSION);
        return 0;
    }
    char item[64];
    long quantity, cents, total = 0, orders = 0;
    while (scanf("%63s %ld %ld", item, &quantity, &cents) == 3) {
        if (quantity < 0 || cents < 0) {
            fprintf(stderr, "invalid order for %s\n", item);
            return 1;
        }
        total += quantity * cents;
        orders++;
    }
    printf("orders=%ld total=%ld.%02ld\n", orders, total / 100, total % 100);
    return 0;
}
