// libqrencode from the system (Debian: libqrencode-dev): QR codes of client configurations.
#include <qrencode.h>
