"""The job's entry point on Managed Service for Apache Flink (run option "python").

`cresta-pipeline package` puts this file at the root of the application zip, beside the
python/ folder with the job's packages and vendored dependencies (run option "pyFiles"),
which Flink puts on the path of this script and of the Python workers.
"""

import sys

from jobs.audio_job import main

if __name__ == "__main__":
    # No arguments: on Managed Flink the job's settings are the application's property
    # groups, which load_config reads from /etc/flink/application_properties.json.
    sys.exit(main([]))
