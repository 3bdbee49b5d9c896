from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0001_initial")]

    operations = [
        migrations.AddField("customer", "display_name", models.TextField(null=True)),
        migrations.RunSQL(
            "INSERT INTO migration_runs VALUES ('shop.0002_customer_display_name')",
            migrations.RunSQL.noop,
        ),
    ]
