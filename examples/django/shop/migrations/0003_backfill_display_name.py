"""A data migration: derive every customer's display name, then require one."""
from django.db import migrations, models


def backfill(apps, schema_editor):
    Customer = apps.get_model("shop", "Customer")
    for c in Customer.objects.filter(display_name__isnull=True):
        c.display_name = c.email.split("@")[0]
        c.save(update_fields=["display_name"])


class Migration(migrations.Migration):
    dependencies = [("shop", "0002_customer_display_name")]

    operations = [
        migrations.RunPython(backfill, migrations.RunPython.noop),
        migrations.AlterField("customer", "display_name", models.TextField()),
        migrations.RunSQL(
            "INSERT INTO migration_runs VALUES ('shop.0003_backfill_display_name')",
            migrations.RunSQL.noop,
        ),
    ]
